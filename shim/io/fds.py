"""Small file-descriptor helpers shared by the stdio modules.

Every descriptor this package creates is close-on-exec. The forker makes the child's 0/1/2 with
dup2(), which clears the flag on the copies only; keeping our own copies CLOEXEC means a binary
logger, the spawner or any other process the daemon spawns at the same moment can never inherit
(and keep open) another container's pipe ends, which would withhold EOF from its client.
"""

from __future__ import annotations

import contextlib
import errno
import os

from shim.errors import Internal, InvalidArgument, NotFound, PermissionDenied, ShimError


def close_quietly(fd: int) -> None:
    """Close ``fd`` if it is a descriptor (>= 0); errors are irrelevant when releasing."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def os_error(exc: OSError, action: str, path: str) -> ShimError:
    """Translate an OSError into the shim's vocabulary, naming the action and the path."""
    text = f"{action} {path!r}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(text)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(text)
    if exc.errno in (errno.EISDIR, errno.ENOEXEC, errno.ENXIO, errno.ELOOP):
        return InvalidArgument(text)
    return Internal(text)


def open_fd(path: str, flags: int, action: str, mode: int = 0o644) -> int:
    """``os.open`` with O_CLOEXEC, raising a ShimError that names the path."""
    try:
        return os.open(path, flags | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise os_error(exc, action, path) from exc


def pipe() -> tuple[int, int]:
    """A close-on-exec pipe (read end, write end)."""
    try:
        return os.pipe2(os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(exc, "create", "pipe") from exc
