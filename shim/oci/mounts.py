"""Mounting a container's rootfs from the mounts containerd hands to Create.

containerd's snapshotter gives a list of mounts (overlay with lowerdir/upperdir/workdir, or a
bind of a single layer) that must be stacked, in order, on `<bundle>/rootfs`. We call mount(2)
directly (through shim/libc.py) rather than running mount(8): it is faster, and errors come back
as an errno we can name in the message. Unmounting is lazy (MNT_DETACH) and repeated until
nothing is left at the target, so it is safe after partial failures and safe to call twice.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass

from shim import libc
from shim.errors import FailedPrecondition, Internal, InvalidArgument

# mount(2) flags, from <sys/mount.h>.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

# option -> (clear?, flag); "clear" options undo a flag set earlier in the list.
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}
_PROPAGATION: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}


def mount_option_names() -> frozenset[str]:
    """Every mount option this module turns into flags or propagation (for `-info`)."""
    return frozenset(_FLAGS) | frozenset(_PROPAGATION)


@dataclass(frozen=True, slots=True)
class MountRequest:
    """One mount from Create's `rootfs` list (containerd.types.Mount, as plain values)."""

    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MountOptions:
    """A mount's option strings sorted the way mount(2) wants them."""

    flags: int
    propagation: int
    data: str


def parse_mount_options(options: Iterable[str]) -> MountOptions:
    """Split mount options into mount(2) flags, propagation flags and the fs data string."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return MountOptions(flags=flags, propagation=propagation, data=",".join(data))


def mount(req: MountRequest, target: str) -> None:
    """Mount one filesystem on `target`, the way containerd's mount package does on Linux.

    A read-only bind needs a second, remounting call: the kernel ignores MS_RDONLY on the
    first bind.
    """
    opts = parse_mount_options(req.options)
    fstype = "" if opts.flags & MS_BIND else req.type
    if req.type == "overlay" and len(opts.data) >= os.sysconf("SC_PAGESIZE"):
        raise InvalidArgument(
            f"overlay mount options are {len(opts.data)} bytes, over the kernel's page-size limit"
        )
    try:
        libc.mount(req.source, target, fstype or None, opts.flags, opts.data or None)
        if opts.flags & MS_BIND and opts.flags & MS_RDONLY:
            libc.mount("", target, None, opts.flags | MS_REMOUNT, None)
        if opts.propagation:
            libc.mount("", target, None, opts.propagation, None)
    except OSError as e:
        msg = f"mount {req.type} {req.source!r} on {target}: {e.strerror}"
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EINVAL):
            raise InvalidArgument(msg) from None
        raise Internal(msg) from None


def is_mountpoint(path: str) -> bool:
    """True when something is mounted exactly at `path` (per /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) > 4 and _unescape(fields[4]) == real:
                return True
    return False


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def unmount_all(target: str) -> int:
    """Detach every mount stacked on `target`; returns how many were removed. Idempotent."""
    count = 0
    while count < 64 and os.path.exists(target) and is_mountpoint(target):
        try:
            libc.umount2(target, MNT_DETACH)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                break
            raise Internal(f"unmount {target}: {e.strerror}") from None
        count += 1
    return count


def mount_rootfs(mounts: Iterable[MountRequest], target: str) -> None:
    """Stack `mounts` on `target` in order; on any failure undo what was mounted and raise."""
    mounts = list(mounts)
    if not mounts:
        return
    if not os.path.isdir(target):
        raise FailedPrecondition(f"rootfs target {target} is not a directory")
    try:
        for req in mounts:
            mount(req, target)
    except BaseException:
        unmount_all(target)
        raise
