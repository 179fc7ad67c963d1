"""The namespace paths of a spec's ``linux.namespaces``, checked before anything joins them.

A path may name any file. Joining one means opening it, and opening a FIFO waits for a
writer (for ever, if none comes), opening a device does what that device does. So Create
checks every path in the daemon first, with calls that cannot block on what the file is:

1. open it with O_PATH, which resolves the path but never opens the file itself (no FIFO
   wait, no device open);
2. fstatfs that descriptor: a namespace file lives on nsfs (``NSFS_MAGIC``), whether it is
   ``/proc/PID/ns/net`` or a bind mount of one (``/run/netns/NAME``, what CNI makes);
3. only then open it for reading, through the O_PATH descriptor's ``/proc/self/fd`` link (the
   very file checked, whatever happened to the path meanwhile), and ask the kernel which kind
   of namespace it is (``NS_GET_NSTYPE``): it must be the entry's type.

Anything else is refused with InvalidArgument naming the entry's type, the path and what the
file is; a missing path is NotFound. The container process opens the path again when it
joins (shim/proc/child.py), so this check is what turns a bad spec into Create's error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterable

from shim import libc
from shim.errors import InvalidArgument
from shim.io.fds import kind, os_error
from shim.oci.spec import Namespace

NSFS_MAGIC = 0x6E736673
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), <linux/nsfs.h>

# The spec's namespace types and the CLONE_NEW* flag NS_GET_NSTYPE answers for each.
CLONE_FLAGS = {
    "mount": 0x00020000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "network": 0x40000000,
    "cgroup": 0x02000000,
    "time": 0x00000080,
}


def check_paths(namespaces: Iterable[Namespace]) -> None:
    """Check every entry that names a path (see the module docstring); raises on the first
    bad one."""
    for ns in namespaces:
        if ns.path:
            check(ns.type, ns.path)


def check(ns_type: str, path: str) -> None:
    """Check that ``path`` is a namespace file of ``ns_type`` without blocking on it.

    Raises InvalidArgument (an unknown type, a relative path, not a namespace file, another
    kind of namespace), NotFound / PermissionDenied naming the path.
    """
    what = f"linux.namespaces: the {ns_type} namespace path {path!r}"
    flag = CLONE_FLAGS.get(ns_type)
    if flag is None:
        raise InvalidArgument(f"{what}: unknown namespace type {ns_type!r}")
    if not path.startswith("/"):
        raise InvalidArgument(f"{what} is not absolute")
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise os_error(e, f"linux.namespaces: open the {ns_type} namespace", path) from None
    try:
        if libc.fstatfs_type(fd) != NSFS_MAGIC:
            raise InvalidArgument(
                f"{what} is {_kind(fd)}, not a namespace file "
                "(one on nsfs, such as /proc/PID/ns/net or a bind mount of it)"
            )
        actual = _nstype(fd)
        if actual is not None and actual != flag:
            names = [name for name, value in CLONE_FLAGS.items() if value == actual]
            kind = repr(names[0]) if names else f"{actual:#x}"
            raise InvalidArgument(f"{what} is a namespace of type {kind}, not {ns_type!r}")
    except OSError as e:
        raise os_error(e, f"linux.namespaces: check the {ns_type} namespace", path) from None
    finally:
        os.close(fd)


def _kind(fd: int) -> str:
    """What the file at ``fd`` is, for a message ("a FIFO", "a regular file", ...)."""
    return kind(os.fstat(fd).st_mode)


def _nstype(path_fd: int) -> int | None:
    """The CLONE_NEW* type of the nsfs file behind the O_PATH ``path_fd``; None when the
    kernel cannot say (NS_GET_NSTYPE arrived in Linux 4.11)."""
    # An nsfs file opens at once, whatever the mode: it is no FIFO and no device.
    fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL):
            return None
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
