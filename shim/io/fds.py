"""Small file-descriptor helpers shared by the stdio modules.

The openers for paths a client or a spec names (``open_fifo``, ``open_regular``,
``read_regular``) never wait on the file: the path is looked at (stat, which opens nothing)
before it is opened, and opened with O_NONBLOCK, so a FIFO nobody else has open, or a device,
never holds Create; what was opened is checked again on the descriptor (the path may have
changed in between). The second end of a FIFO is opened through the first end's
``/proc/self/fd`` link: the same FIFO, which by then has a reader, so that open cannot wait
either.

Every descriptor this package creates is close-on-exec. The forker makes the child's 0/1/2 with
dup2(), which clears the flag on the copies only; keeping our own copies CLOEXEC means a binary
logger, the spawner or any other process the daemon spawns at the same moment can never inherit
(and keep open) another container's pipe ends, which would withhold EOF from its client.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

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


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, for a message: "a FIFO", "a directory", ..."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a file of unknown type"


def stat_path(path: str, action: str) -> os.stat_result | None:
    """``os.stat`` (which opens nothing); None when nothing is there, a ShimError naming the
    path for any other failure."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error(exc, action, path) from exc


def open_fifo(path: str, what: str) -> tuple[int, int]:
    """(read end, write end) of the FIFO at ``path``, both O_NONBLOCK, neither waiting for
    the client's end (module docstring).

    Raises NotFound / PermissionDenied naming ``path``, InvalidArgument when it is not a
    FIFO. Nothing stays open on failure.
    """
    st = stat_path(path, f"stat {what}")
    if st is None:
        raise NotFound(f"open {what} {path!r}: No such file or directory")
    if not stat.S_ISFIFO(st.st_mode):
        raise InvalidArgument(f"{what} {path!r} is {kind(st.st_mode)}, not a FIFO")
    reader = open_fd(path, os.O_RDONLY | os.O_NONBLOCK, f"open {what}")
    try:
        mode = os.fstat(reader).st_mode
        if not stat.S_ISFIFO(mode):  # replaced since the stat
            raise InvalidArgument(f"{what} {path!r} is {kind(mode)}, not a FIFO")
        try:
            writer = os.open(f"/proc/self/fd/{reader}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise os_error(exc, f"open {what} for writing", path) from exc
    except BaseException:
        close_quietly(reader)
        raise
    return reader, writer


def open_regular(path: str, flags: int, what: str, *, create: bool = False) -> int:
    """Open ``path`` only if it is a regular file (or, with ``create``, make it one). The
    descriptor is blocking again on return: O_NONBLOCK is for the open only.

    Raises InvalidArgument naming ``path`` and what it is when it is not a regular file,
    NotFound / PermissionDenied as the open fails.
    """
    refusal = f"{what} {path!r} is {{}}, not a regular file"
    st = stat_path(path, f"stat {what}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(refusal.format(kind(st.st_mode)))
    extra = os.O_NONBLOCK | os.O_NOCTTY | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags | extra | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO without a reader appeared since the stat
            raise InvalidArgument(refusal.format("a FIFO")) from exc
        raise os_error(exc, f"open {what}", path) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced since the stat
            raise InvalidArgument(refusal.format(kind(mode)))
        os.set_blocking(fd, True)
    except BaseException:
        close_quietly(fd)
        raise
    return fd


def read_regular(path: str, what: str, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (a file a client or a spec names), read
    without ever waiting on what the path turns out to be (module docstring).

    Raises InvalidArgument naming ``path`` when it is not a regular file or holds more than
    ``limit`` bytes, NotFound / PermissionDenied as the open fails.
    """
    st = stat_path(path, f"stat {what}")
    if st is None:
        raise NotFound(f"open {what} {path!r}: No such file or directory")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{what} {path!r} is {kind(st.st_mode)}, not a regular file")
    fd = open_regular(path, os.O_RDONLY, what)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise os_error(exc, f"read {what}", path) from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InvalidArgument(f"{what} {path!r} is larger than {limit} bytes")
    return data
