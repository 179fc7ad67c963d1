"""Which build of the shim a process runs, so that a binary upgraded on the node is noticed.

The identity is a checksum of the version and of the size, mtime and inode of the code: in
the PyInstaller bundle, its binary (an upgrade replaces the whole bundle, binary included);
in a checkout, the interpreter and every `.py` file of the `shim` and `runtimes` packages.
`start` computes its own and sends it; a warm runtime whose identity differs retires, and
`start` launches one of the new build. It costs one stat call (bundle) or about a hundred
(checkout), and no import.
"""

from __future__ import annotations

import os
import sys
import zlib

import shim


def _files() -> list[str]:
    found = [sys.executable]
    if getattr(sys, "frozen", False):
        return found
    top = os.path.dirname(os.path.dirname(os.path.abspath(shim.__file__)))
    for package in ("shim", "runtimes"):
        for root, dirs, files in os.walk(os.path.join(top, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".py")]
    return found


_identity: str | None = None  # computed once per process image (see build_identity)


def build_identity() -> str:
    """The identity of the code this process runs (see the module docstring). Computed once
    and kept: a process forked afterwards (a pod daemon, from the warm runtime or from a
    cold `start`) holds the identity of the code it really runs, not of what is on disk
    when it asks, which an upgrade may have replaced (shim/proc/spawner.py compares them)."""
    global _identity
    if _identity is None:
        crc = zlib.crc32(shim.__version__.encode())
        for path in _files():
            try:
                st = os.stat(path)
            except OSError:
                continue
            crc = zlib.crc32(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode(), crc)
        _identity = f"{shim.__version__}-{crc:08x}"
    return _identity
