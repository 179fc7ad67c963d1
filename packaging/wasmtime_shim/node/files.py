"""Paths under a node root, atomic writes, and placing the frozen binary.

Everything here takes host paths ("/usr/local/bin") plus a `root` ("/" on the node itself,
"/host" in the DaemonSet, a temp dir in tests): files are written at root/path, while symlink
targets and paths written into config files stay host paths, because that is what containerd
on the host will read.

The shipped bundle is PyInstaller's onedir layout (the binary beside `_internal/`), chosen for
start latency (bench/start_delete.py). It is copied whole into a lib dir and the bin dir gets
symlinks: containerd runs `containerd-shim-wasmtime-v1` from its PATH, the bootloader resolves
the symlink to find `_internal/`, and `wasmtime-shim` is the same binary under the tool's name.
A onefile binary is copied as a single file instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shim.errors import InvalidArgument, NotFound

SHIM_NAME = "containerd-shim-wasmtime-v1"
TOOL_NAME = "wasmtime-shim"
ONEDIR_MARKER = "_internal"


@dataclass(frozen=True, slots=True)
class Bundle:
    """The binary to install: a onedir tree (`directory` set) or a single file."""

    binary: Path
    directory: Path | None


def host(root: Path, path: str | os.PathLike[str]) -> Path:
    """`path` (absolute on the node) as seen from here, under `root`."""
    p = Path(path)
    if not p.is_absolute():
        raise InvalidArgument(f"{path}: node paths must be absolute")
    return Path(root) / p.relative_to("/")


def find_bundle(binary: Path | None) -> Bundle:
    """The bundle to install: `binary` (the built one), else the frozen binary running us."""
    if binary is None:
        if not getattr(sys, "frozen", False):
            raise InvalidArgument(
                "not running from the frozen binary: pass --binary with the output of "
                "packaging/build.py"
            )
        binary = Path(sys.executable)
    binary = binary.resolve()
    if binary.is_dir():
        binary = binary / SHIM_NAME
    if not binary.is_file():
        raise NotFound(f"{binary}: no such binary")
    directory = binary.parent if (binary.parent / ONEDIR_MARKER).is_dir() else None
    return Bundle(binary, directory)


def tree_digest(path: Path) -> str:
    """A digest of a file or a directory tree (names, modes, contents, link targets)."""
    h = hashlib.sha256()
    entries = sorted(path.rglob("*")) if path.is_dir() else [path]
    for entry in entries:
        rel = entry.relative_to(path) if path.is_dir() else Path(entry.name)
        h.update(str(rel).encode() + b"\0")
        if entry.is_symlink():
            h.update(b"L" + os.readlink(entry).encode())
        elif entry.is_file():
            h.update(b"F%o" % (entry.stat().st_mode & 0o777))
            h.update(hashlib.sha256(entry.read_bytes()).digest())
    return h.hexdigest()


def copy_tree_atomic(src: Path, dest: Path) -> None:
    """Replace `dest` by a copy of `src`; a reader sees the old tree or the new, never half."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(src, staging / "t", symlinks=True)
        if dest.exists():
            old = staging / "old"
            os.rename(dest, old)
        os.rename(staging / "t", dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def copy_file_atomic(src: Path, dest: Path, mode: int = 0o755) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)


def write_atomic(path: Path, data: bytes, like: Path | None = None) -> None:
    """Write via a temp file in the same directory, fsync, rename; keep `like`'s mode/owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if like is not None and like.exists():
            st = like.stat()
            os.chmod(tmp, st.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def symlink_atomic(target: str, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.lnk")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
