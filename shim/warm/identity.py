"""Which build of the shim a process runs, so that a binary upgraded on the node is noticed.

The identity is a checksum of the version and of the size, mtime and inode of the executable
(the frozen binary, or the venv's interpreter) and of every source file of the `shim` and
`runtimes` packages as they lie on disk (`.py` in a checkout, `.pyc` in the PyInstaller
bundle). `start` computes its own and sends it; a warm
runtime whose identity differs retires, and `start` launches one of the new build. Computing
it costs ~a hundred stat calls and no import.
"""

from __future__ import annotations

import os
import sys
import zlib

import shim


def _files() -> list[str]:
    found = [sys.executable]
    top = os.path.dirname(os.path.dirname(os.path.abspath(shim.__file__)))
    for package in ("shim", "runtimes"):
        for root, dirs, files in os.walk(os.path.join(top, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            found += [os.path.join(root, f) for f in sorted(files) if f.endswith((".py", ".pyc"))]
    return found


def build_identity() -> str:
    """The identity of the code this process runs (see the module docstring)."""
    crc = zlib.crc32(shim.__version__.encode())
    for path in _files():
        try:
            st = os.stat(path)
        except OSError:
            continue
        crc = zlib.crc32(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode(), crc)
    return f"{shim.__version__}-{crc:08x}"
