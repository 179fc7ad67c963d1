"""The system calls the shim makes through libc, because Python 3.11's os module has none for them.

mount(2), umount2(2), setns(2), prctl(2), unshare(2) and fstatfs(2) have no function in the os
module of Python 3.11 (os.setns and os.unshare arrive in 3.12; os.fstatvfs has no f_type), so
they are called through ctypes, and only here. Each wrapper passes typed arguments, and on
failure raises ``OSError(errno, strerror)``, as the os module does, so callers handle one
failure style and add their own context (the path, the namespace) to the message.

libc is the one already loaded into the process (``CDLL(None)``, dlopen of the program itself):
no library search at import time, and the same libc in the venv and in the frozen binary.
ctypes releases the GIL around each call; errno is captured per thread (``use_errno``).
"""

from __future__ import annotations

import ctypes
import os

# prctl(2) options the shim uses, from <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)

_mount = _libc.mount
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_mount.restype = ctypes.c_int

_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int

_setns = _libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_setns.restype = ctypes.c_int

_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int

_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_unshare.restype = ctypes.c_int

# struct statfs starts with f_type (a C long on every Linux ABI the shim runs on); 120 bytes
# on 64-bit, 84 on 32-bit. The buffer is larger than either so no ABI detail can overrun it.
_STATFS_SIZE = 256
_fstatfs = _libc.fstatfs
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
_fstatfs.restype = ctypes.c_int


def _check(rc: int) -> int:
    """``rc`` when the call succeeded; else the OSError for the errno it left."""
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    """mount(2). ``fstype`` and ``data`` may be None (NULL), as a bind or remount passes them."""
    _check(
        _mount(
            source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            flags,
            None if data is None else data.encode(),
        )
    )


def umount2(target: str, flags: int) -> None:
    """umount2(2), e.g. with MNT_DETACH for a lazy unmount."""
    _check(_umount2(target.encode(), flags))


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace open at ``fd``; ``nstype`` 0 accepts any type."""
    _check(_setns(fd, nstype))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); returns the call's non-negative result (what a PR_GET_* option reads)."""
    return _check(_prctl(option, arg2, arg3, arg4, arg5))


def unshare(flags: int) -> None:
    """unshare(2) with CLONE_* ``flags``."""
    _check(_unshare(flags))


def fstatfs_type(fd: int) -> int:
    """fstatfs(2)'s ``f_type``: the magic number of the filesystem ``fd`` is on (os.fstatvfs
    has no such field). Works on O_PATH descriptors."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    _check(_fstatfs(fd, buf))
    return ctypes.c_ulong.from_buffer(buf).value
