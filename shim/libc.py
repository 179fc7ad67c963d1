"""The system calls the shim makes through libc, because Python 3.11's os module has none for them.

mount(2), umount2(2), setns(2), prctl(2), unshare(2), fstatfs(2), capset(2), pivot_root(2),
openat2(2) and the descriptor-based mount calls (open_tree, move_mount, mount_setattr, fsopen,
fsconfig, fsmount) have no function in the os module of Python 3.11 (os.setns and os.unshare
arrive in 3.12; os.fstatvfs has no f_type; the others are in no version), so they are called
through ctypes, and only here. pivot_root, openat2 and the mount calls have no glibc wrapper
either and go through syscall(2) with their numbers. Each wrapper passes typed arguments,
and on failure raises ``OSError(errno, strerror)``, as the os module does, so callers handle
one failure style and add their own context (the path, the namespace) to the message.

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
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# open_tree(2) and move_mount(2) flags, from <linux/mount.h> and <linux/fcntl.h>.
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6

# System call numbers of the calls glibc has no wrapper for. open_tree and move_mount came
# after the kernel unified its tables (the same number on every architecture); pivot_root
# did not.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_OPENAT2 = 437
_SYS_MOUNT_SETATTR = 442
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, -1)

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

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CAPABILITY_VERSION_3 = 0x20080522  # 64-bit sets, as two 32-bit halves
_capset = _libc.capset
_capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_capset.restype = ctypes.c_int

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


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for this thread: the three capability sets as 64-bit masks."""
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_capset(ctypes.byref(header), data))


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): make `new_root` this mount namespace's root."""
    if _SYS_PIVOT_ROOT < 0:
        raise OSError(38, f"pivot_root: no system call number known for {os.uname().machine}")
    _check(
        _syscall(
            ctypes.c_long(_SYS_PIVOT_ROOT),
            ctypes.c_char_p(new_root.encode()),
            ctypes.c_char_p(put_old.encode()),
        )
    )


def open_tree(path: str, flags: int, dirfd: int = AT_FDCWD) -> int:
    """open_tree(2): a descriptor for the mount at `path` (a detached copy with
    OPEN_TREE_CLONE), which move_mount can attach elsewhere, even after pivot_root."""
    return _check(
        _syscall(
            ctypes.c_long(_SYS_OPEN_TREE),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(path.encode()),
            ctypes.c_uint(flags),
        )
    )


def move_mount_onto(fd: int, target_fd: int) -> None:
    """move_mount(2) of the detached mount `fd` onto the file or directory open at
    `target_fd` (no path is resolved: the caller resolved the target safely)."""
    _check(
        _syscall(
            ctypes.c_long(_SYS_MOVE_MOUNT),
            ctypes.c_int(fd),
            ctypes.c_char_p(b""),
            ctypes.c_int(target_fd),
            ctypes.c_char_p(b""),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
        )
    )


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open `path` relative to `dirfd` with the RESOLVE_* restrictions."""
    how = _OpenHow(flags, mode, resolve)
    return _check(
        _syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(path.encode()),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(
    fd: int, attr_set: int, attr_clr: int = 0, propagation: int = 0, recursive: bool = False
) -> None:
    """mount_setattr(2) on the mount open at `fd`: MOUNT_ATTR_* flags, and a propagation
    type (MS_PRIVATE, MS_SLAVE, MS_SHARED or MS_UNBINDABLE; 0 leaves it)."""
    attr = _MountAttr(attr_set, attr_clr, propagation, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(
        _syscall(
            ctypes.c_long(_SYS_MOUNT_SETATTR),
            ctypes.c_int(fd),
            ctypes.c_char_p(b""),
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
    )


def fsmount_new(fstype: str, options: list[tuple[str, str | None]], attrs: int) -> int:
    """A new, detached mount of `fstype` (fsopen, fsconfig per option: key=value as a
    string, a bare key as a flag; fsmount with MOUNT_ATTR_* `attrs`), to be attached with
    move_mount_onto."""
    fs = _check(
        _syscall(ctypes.c_long(_SYS_FSOPEN), ctypes.c_char_p(fstype.encode()), ctypes.c_uint(1))
    )
    try:
        for key, value in options:
            cmd = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
            try:
                _check(
                    _syscall(
                        ctypes.c_long(_SYS_FSCONFIG),
                        ctypes.c_int(fs),
                        ctypes.c_uint(cmd),
                        ctypes.c_char_p(key.encode()),
                        ctypes.c_char_p(None if value is None else value.encode()),
                        ctypes.c_int(0),
                    )
                )
            except OSError as e:
                raise OSError(e.errno, f"option {key!r}: {e.strerror}") from None
        _check(
            _syscall(
                ctypes.c_long(_SYS_FSCONFIG),
                ctypes.c_int(fs),
                ctypes.c_uint(FSCONFIG_CMD_CREATE),
                ctypes.c_char_p(None),
                ctypes.c_char_p(None),
                ctypes.c_int(0),
            )
        )
        return _check(
            _syscall(
                ctypes.c_long(_SYS_FSMOUNT),
                ctypes.c_int(fs),
                ctypes.c_uint(1),
                ctypes.c_uint(attrs),
            )
        )
    finally:
        os.close(fs)


def fstatfs_type(fd: int) -> int:
    """fstatfs(2)'s ``f_type``: the magic number of the filesystem ``fd`` is on (os.fstatvfs
    has no such field). Works on O_PATH descriptors."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    _check(_fstatfs(fd, buf))
    return ctypes.c_ulong.from_buffer(buf).value
