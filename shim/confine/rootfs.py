"""The guest's filesystem: its own mount namespace, the spec's mounts, then pivot_root.

Runs in the container process, in two halves around the module load:

`stage` (on the host's tree, as root): every bind source is taken as a detached copy of its
mount with open_tree(2) (recursive for `rbind`), the container's cgroup directories too, and
/dev/null for masked files. The descriptors survive the pivot.

`enter` (in the new mount namespace, which the child has already unshared): `/` becomes a
slave of the host's tree (the host's later mounts still propagate in, ours never out), the
rootfs is bind-mounted on itself, and pivot_root makes it `/` with the host's tree detached.
From then on every path resolves inside the container's root (`..` stops at `/`; an absolute
symlink points into the container), so the spec's mounts are attached at their destinations
in spec order without any path arithmetic here: a bind by move_mount(2) of its staged copy,
every other type by mount(2). Mount points are created as runc creates them (a directory, or
an empty file for a file bind). Then the default devices on a tmpfs /dev, masked paths (an
empty read-only tmpfs on a directory, /dev/null on a file), read-only paths, and last the
read-only remount of `/` when `root.readonly`. The kernel, not WASI path matching, then
enforces `ro` and every other rule: no spelling of a path reaches a host file through a
read-only mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field

from shim import libc
from shim.confine.policy import BIND_TYPES, CGROUP_TYPES, ContainerMount, Device, Filesystem
from shim.errors import FailedPrecondition
from shim.oci import mounts as m

_KEPT_FLAGS = m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC | m.MS_NOATIME | m.MS_NODIRATIME
_ATIME_FLAGS = m.MS_NOATIME | m.MS_NODIRATIME | m.MS_RELATIME | m.MS_STRICTATIME
_REMOUNT_FLAGS = m.MS_RDONLY | m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC | _ATIME_FLAGS

# The devices every container gets on a tmpfs /dev, as runc makes them.
DEFAULT_DEVICES = (
    Device("/dev/null", "c", 1, 3),
    Device("/dev/zero", "c", 1, 5),
    Device("/dev/full", "c", 1, 7),
    Device("/dev/random", "c", 1, 8),
    Device("/dev/urandom", "c", 1, 9),
    Device("/dev/tty", "c", 5, 0),
)
_DEV_LINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)


@dataclass(slots=True)
class Staged:
    """Detached mounts taken on the host's tree, by index of `Filesystem.mounts`."""

    binds: dict[int, int] = field(default_factory=dict)
    cgroups: list[tuple[str, int]] = field(default_factory=list)  # (name under the mount, fd)
    devnull: int = -1


def _fail(mount: ContainerMount | None, what: str, e: OSError) -> FailedPrecondition:
    where = f"mount {mount.destination} ({mount.type} {mount.source!r})" if mount else what
    return FailedPrecondition(f"{where}: {what}: {e.strerror or e}")


def stage(fs: Filesystem) -> Staged:
    """Take every host-side source while the host's tree is still this process's root."""
    staged = Staged()
    flags = libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC
    for i, mount in enumerate(fs.mounts):
        if mount.type in BIND_TYPES:
            recursive = libc.AT_RECURSIVE if "rbind" in mount.options else 0
            try:
                staged.binds[i] = libc.open_tree(mount.source, flags | recursive)
            except OSError as e:
                raise _fail(mount, "cannot take the source", e) from None
    for name, path in fs.cgroup_dirs:
        try:
            staged.cgroups.append((name, libc.open_tree(path, flags)))
        except OSError as e:
            raise _fail(None, f"cgroup directory {path}", e) from None
    if fs.masked_paths:
        staged.devnull = libc.open_tree("/dev/null", flags)
    return staged


def _make_mountpoint(path: str, is_file: bool) -> None:
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if is_file:
        if not os.path.lexists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    else:
        os.makedirs(path, exist_ok=True)


def _remount(path: str, flags: int) -> None:
    """Apply per-mount flags to what is mounted at `path`, keeping the ones it has."""
    current = os.statvfs(path).f_flag & _KEPT_FLAGS
    if flags & _ATIME_FLAGS:
        current &= ~_ATIME_FLAGS
    libc.mount("", path, None, m.MS_BIND | m.MS_REMOUNT | current | flags, None)


def _attach(mount: ContainerMount, fd: int, staged: Staged) -> None:
    opts = m.parse_mount_options(mount.options)
    dest = mount.destination
    if mount.type in BIND_TYPES:
        _make_mountpoint(dest, not stat.S_ISDIR(os.fstat(fd).st_mode))
        libc.move_mount_fd(fd, dest)
        if opts.flags & _REMOUNT_FLAGS:
            _remount(dest, opts.flags & _REMOUNT_FLAGS)
    elif mount.type in CGROUP_TYPES:
        _make_mountpoint(dest, False)
        if len(staged.cgroups) == 1 and staged.cgroups[0][0] == "":  # v2: the directory
            libc.move_mount_fd(staged.cgroups[0][1], dest)
        else:  # v1: a tmpfs holding each hierarchy's directory of this container
            libc.mount("tmpfs", dest, "tmpfs", m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC, "mode=755")
            for name, cgroup_fd in staged.cgroups:
                sub = os.path.join(dest, name)
                os.makedirs(sub, exist_ok=True)
                libc.move_mount_fd(cgroup_fd, sub)
                if opts.flags & m.MS_RDONLY:
                    _remount(sub, m.MS_RDONLY)
        if opts.flags & _REMOUNT_FLAGS:
            _remount(dest, opts.flags & _REMOUNT_FLAGS)
    else:
        _make_mountpoint(dest, False)
        libc.mount(mount.source or mount.type, dest, mount.type, opts.flags, opts.data or None)
    if opts.propagation:
        libc.mount("", dest, None, opts.propagation, None)


def _make_device(dev: Device) -> None:
    kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[dev.type]
    os.makedirs(os.path.dirname(dev.path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dev.path)
    os.mknod(dev.path, kind | (dev.mode & 0o7777), os.makedev(dev.major, dev.minor))
    os.chmod(dev.path, dev.mode & 0o7777)  # mknod's mode is cut by the umask
    os.chown(dev.path, dev.uid, dev.gid)


def _populate_dev(fs: Filesystem) -> None:
    if fs.dev_is_tmpfs:
        for dev in DEFAULT_DEVICES:
            _make_device(dev)
        for target, link in _DEV_LINKS:
            with contextlib.suppress(FileExistsError):
                os.symlink(target, link)
        if os.path.isdir("/dev/pts"):
            with contextlib.suppress(FileExistsError):
                os.symlink("pts/ptmx", "/dev/ptmx")
    for dev in fs.devices:
        _make_device(dev)


def _mask(path: str, staged: Staged) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        libc.mount("tmpfs", path, "tmpfs", m.MS_RDONLY, None)
        return
    clone = libc.open_tree(
        "", libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC | libc.AT_EMPTY_PATH, staged.devnull
    )
    try:
        libc.move_mount_fd(clone, path)
    finally:
        os.close(clone)


def _readonly(path: str) -> None:
    if not os.path.lexists(path):
        return
    libc.mount(path, path, None, m.MS_BIND | m.MS_REC, None)
    _remount(path, m.MS_RDONLY)


def enter(fs: Filesystem, staged: Staged) -> None:
    """Pivot into the rootfs and build the container's tree (see the module docstring).
    The calling process must already be in a mount namespace of its own."""
    step = "making / a slave mount"
    try:
        libc.mount("", "/", None, fs.root_propagation, None)
        step = f"binding the rootfs {fs.rootfs} on itself"
        libc.mount(fs.rootfs, fs.rootfs, None, m.MS_BIND | m.MS_REC, None)
        step = "pivot_root"
        os.chdir(fs.rootfs)
        libc.pivot_root(".", ".")
        libc.umount2(".", m.MNT_DETACH)
        os.chdir("/")
    except OSError as e:
        raise FailedPrecondition(f"cannot enter the container's root: {step}: {e}") from None
    for i, mount in enumerate(fs.mounts):
        try:
            _attach(mount, staged.binds.get(i, -1), staged)
        except OSError as e:
            raise _fail(mount, "cannot mount it", e) from None
        finally:
            if i in staged.binds:
                os.close(staged.binds.pop(i))
    try:
        _populate_dev(fs)
    except OSError as e:
        raise FailedPrecondition(f"cannot create the container's devices: {e}") from None
    for path in fs.masked_paths:
        try:
            _mask(path, staged)
        except OSError as e:
            raise FailedPrecondition(f"cannot mask {path}: {e.strerror or e}") from None
    for path in fs.readonly_paths:
        try:
            _readonly(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise FailedPrecondition(f"cannot make {path} read-only: {e.strerror}") from None
    for _, fd in staged.cgroups:
        with contextlib.suppress(OSError):
            os.close(fd)
    if staged.devnull >= 0:
        os.close(staged.devnull)
    if fs.readonly:
        try:
            _remount("/", m.MS_RDONLY)
        except OSError as e:
            raise FailedPrecondition(f"cannot make the root read-only: {e.strerror}") from None
