"""The guest's filesystem: its own mount namespace, the spec's mounts, then pivot_root.

Runs in the container process, in two halves around the module load:

`stage` (on the host's tree, as root): every bind source is taken as a detached copy of its
mount with open_tree(2) (recursive for `rbind`) and given its flags (`ro`...) at once, the
container's cgroup directories too, and /dev/null for masked files. The descriptors survive
the pivot.

`enter` (in the new mount namespace, which the child has already unshared): `/` becomes a
slave of the host's tree (the host's later mounts still propagate in, ours never out), the
rootfs is bind-mounted on itself, and pivot_root makes it `/` with the host's tree detached.
From then on every path the image could influence is resolved by openat2(2) inside the
container's root with /proc's magic links refused (`_open_in_root`): `..` stops at `/`, a
symlink points inside, and a link through /proc/PID/root or /proc/self/fd/N (which a mounted
/proc would otherwise follow out of the root, to the host's tree or to a staged source) is an
error. Mount points are created that way, step by step, as runc creates them (a directory,
or an empty file for a file bind), and every mount is attached to the descriptor of its
mount point, never to a path, in spec order: a bind by move_mount(2) of its staged copy,
every other type as a new mount from fsopen/fsmount(2). Then the default devices on a tmpfs
/dev, masked paths (an empty read-only tmpfs on a directory, /dev/null on a file), read-only
paths, and last the read-only root when `root.readonly`. Flags go through mount_setattr(2)
(Linux 5.12 or later). The kernel, not WASI path matching, then enforces `ro` and every
other rule: no spelling of a path reaches a host file through a read-only mount.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field

from shim import libc
from shim.confine.policy import BIND_TYPES, CGROUP_TYPES, ContainerMount, Device, Filesystem
from shim.errors import FailedPrecondition
from shim.oci import mounts as m

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
    opened: list[int] = field(default_factory=list)  # mounts made in `enter`, to close

    def close(self) -> None:
        fds = [*self.binds.values(), *(fd for _, fd in self.cgroups), *self.opened]
        if self.devnull >= 0:
            fds.append(self.devnull)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.binds.clear()
        self.cgroups.clear()
        self.opened.clear()
        self.devnull = -1


def _fail(mount: ContainerMount | None, what: str, e: OSError) -> FailedPrecondition:
    if mount is None:
        return FailedPrecondition(f"{what}: {e.strerror or e}")
    where = f"mount {mount.destination} ({mount.type} {mount.source!r})"
    return FailedPrecondition(f"{where}: {what}: {e.strerror or e}")


def stage(fs: Filesystem) -> Staged:
    """Take every host-side source while the host's tree is still this process's root."""
    staged = Staged()
    flags = libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC
    for i, mount in enumerate(fs.mounts):
        if mount.type in BIND_TYPES:
            recursive = libc.AT_RECURSIVE if "rbind" in mount.options else 0
            try:
                fd = libc.open_tree(mount.source, flags | recursive)
            except OSError as e:
                raise _fail(mount, "cannot take the source", e) from None
            staged.binds[i] = fd
            attr, clear = _attrs(m.parse_mount_options(mount.options).flags)
            if attr or clear:
                try:
                    libc.mount_setattr(fd, attr, clear)
                except OSError as e:
                    raise _fail(mount, "cannot set its options", e) from None
    for name, path in fs.cgroup_dirs:
        try:
            staged.cgroups.append((name, libc.open_tree(path, flags)))
        except OSError as e:
            raise _fail(None, f"cgroup directory {path}", e) from None
    if fs.masked_paths:
        staged.devnull = libc.open_tree("/dev/null", flags)
    return staged


_RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
_PATH = os.O_PATH | os.O_CLOEXEC


def _attrs(flags: int) -> tuple[int, int]:
    """mount(2) flags -> (MOUNT_ATTR_* to set, to clear) for mount_setattr/fsmount."""
    attr = 0
    for flag, bit in (
        (m.MS_RDONLY, libc.MOUNT_ATTR_RDONLY),
        (m.MS_NOSUID, libc.MOUNT_ATTR_NOSUID),
        (m.MS_NODEV, libc.MOUNT_ATTR_NODEV),
        (m.MS_NOEXEC, libc.MOUNT_ATTR_NOEXEC),
        (m.MS_NODIRATIME, libc.MOUNT_ATTR_NODIRATIME),
    ):
        if flags & flag:
            attr |= bit
    clear = 0
    if flags & (m.MS_NOATIME | m.MS_STRICTATIME | m.MS_RELATIME):
        clear = libc.MOUNT_ATTR__ATIME
        if flags & m.MS_NOATIME:
            attr |= libc.MOUNT_ATTR_NOATIME
        elif flags & m.MS_STRICTATIME:
            attr |= libc.MOUNT_ATTR_STRICTATIME
    return attr, clear


def _data_options(data: str) -> list[tuple[str, str | None]]:
    """A mount data string ("mode=755,size=64k,newinstance") as fsconfig keys."""
    out: list[tuple[str, str | None]] = []
    for item in filter(None, data.split(",")):
        key, eq, value = item.partition("=")
        out.append((key, value if eq else None))
    return out


def _open_in_root(root: int, path: str, flags: int = _PATH) -> int:
    """`path` opened inside the container's root: symlinks resolve inside it, and /proc's
    magic links (/proc/PID/root, /proc/self/fd/N), which would lead out, are refused."""
    return libc.openat2(root, path, flags, _RESOLVE)


def _mountpoint(root: int, dest: str, is_file: bool) -> int:
    """An O_PATH descriptor of `dest` in the container's root, each missing component
    created (directories; an empty file last for a file bind) as runc creates them. Every
    step is resolved by `_open_in_root`: nothing outside the root is created or reached."""
    parts = [p for p in dest.split("/") if p]
    path = ""
    fd = os.dup(root)
    for i, name in enumerate(parts):
        parent, fd = fd, -1
        path = f"{path}/{name}"
        try:
            try:
                fd = _open_in_root(root, path)
            except FileNotFoundError:
                try:
                    if is_file and i == len(parts) - 1:
                        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                        os.close(os.open(name, flags, 0o644, dir_fd=parent))
                    else:
                        os.mkdir(name, 0o755, dir_fd=parent)
                except FileExistsError:
                    pass  # a link whose target is missing: the open below says so
                fd = _open_in_root(root, path)
        finally:
            os.close(parent)
    return fd


def _attach(root: int, mount: ContainerMount, staged_fd: int, staged: Staged) -> None:
    opts = m.parse_mount_options(mount.options)
    attr, clear = _attrs(opts.flags)
    dest = mount.destination
    if mount.type in BIND_TYPES:
        target = _mountpoint(root, dest, not stat.S_ISDIR(os.fstat(staged_fd).st_mode))
        attached = staged_fd
        libc.move_mount_onto(staged_fd, target)
        attr = clear = 0  # given at `stage`
    elif mount.type in CGROUP_TYPES:
        target = _mountpoint(root, dest, False)
        if len(staged.cgroups) == 1 and staged.cgroups[0][0] == "":  # v2: the directory
            attached = staged.cgroups[0][1]
            libc.move_mount_onto(attached, target)
        else:  # v1: a tmpfs holding each hierarchy's directory of this container
            attached = libc.fsmount_new(
                "tmpfs",
                [("source", "tmpfs"), ("mode", "755")],
                libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NODEV | libc.MOUNT_ATTR_NOEXEC,
            )
            staged.opened.append(attached)
            libc.move_mount_onto(attached, target)
            for name, cgroup_fd in staged.cgroups:
                sub = _mountpoint(root, f"{dest}/{name}", False)
                try:
                    libc.move_mount_onto(cgroup_fd, sub)
                finally:
                    os.close(sub)
                if attr & libc.MOUNT_ATTR_RDONLY:
                    libc.mount_setattr(cgroup_fd, libc.MOUNT_ATTR_RDONLY)
    else:
        target = _mountpoint(root, dest, False)
        options = [("source", mount.source or mount.type), *_data_options(opts.data)]
        attached = libc.fsmount_new(mount.type, options, attr)
        staged.opened.append(attached)
        libc.move_mount_onto(attached, target)
        attr = clear = 0  # given to fsmount already
    os.close(target)
    propagation = opts.propagation & ~m.MS_REC
    if attr or clear or propagation:
        libc.mount_setattr(
            attached, attr, clear, propagation, recursive=bool(opts.propagation & m.MS_REC)
        )


def _make_device(root: int, dev: Device) -> None:
    kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[dev.type]
    parent = _mountpoint(root, os.path.dirname(dev.path), False)
    name = os.path.basename(dev.path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent)
        old = os.umask(0)  # the node gets exactly the spec's mode
        try:
            os.mknod(
                name, kind | (dev.mode & 0o7777), os.makedev(dev.major, dev.minor), dir_fd=parent
            )
        finally:
            os.umask(old)
        os.chown(name, dev.uid, dev.gid, dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)


def _populate_dev(root: int, fs: Filesystem) -> None:
    if fs.dev_is_tmpfs:
        for dev in DEFAULT_DEVICES:
            _make_device(root, dev)
        links = [*_DEV_LINKS]
        if os.path.isdir("/dev/pts"):
            links.append(("pts/ptmx", "/dev/ptmx"))
        dev_dir = _open_in_root(root, "/dev", _PATH | os.O_DIRECTORY)
        try:
            for target, link in links:
                with contextlib.suppress(FileExistsError):
                    os.symlink(target, os.path.basename(link), dir_fd=dev_dir)
        finally:
            os.close(dev_dir)
    for dev in fs.devices:
        _make_device(root, dev)


def _mask(root: int, path: str, staged: Staged) -> None:
    try:
        target = _open_in_root(root, path)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISDIR(os.fstat(target).st_mode):
            mnt = libc.fsmount_new("tmpfs", [("source", "tmpfs")], libc.MOUNT_ATTR_RDONLY)
        else:
            flags = libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC | libc.AT_EMPTY_PATH
            mnt = libc.open_tree("", flags, staged.devnull)
        try:
            libc.move_mount_onto(mnt, target)
        finally:
            os.close(mnt)
    finally:
        os.close(target)


def _readonly(root: int, path: str) -> None:
    try:
        target = _open_in_root(root, path)
    except FileNotFoundError:
        return
    try:
        flags = (
            libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC | libc.AT_EMPTY_PATH | libc.AT_RECURSIVE
        )
        clone = libc.open_tree("", flags, target)
        try:
            libc.mount_setattr(clone, libc.MOUNT_ATTR_RDONLY, recursive=True)
            libc.move_mount_onto(clone, target)
        finally:
            os.close(clone)
    finally:
        os.close(target)


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
        root = os.open("/", _PATH | os.O_DIRECTORY)
    except OSError as e:
        raise FailedPrecondition(f"cannot enter the container's root: {step}: {e}") from None
    try:
        _build(root, fs, staged)
    finally:
        os.close(root)
        staged.close()


def _build(root: int, fs: Filesystem, staged: Staged) -> None:
    for i, mount in enumerate(fs.mounts):
        try:
            _attach(root, mount, staged.binds.get(i, -1), staged)
        except OSError as e:
            raise _fail(mount, "cannot mount it", e) from None
    try:
        _populate_dev(root, fs)
    except OSError as e:
        raise FailedPrecondition(f"cannot create the container's devices: {e}") from None
    for path in fs.masked_paths:
        try:
            _mask(root, path, staged)
        except OSError as e:
            raise FailedPrecondition(f"cannot mask {path}: {e.strerror or e}") from None
    for path in fs.readonly_paths:
        try:
            _readonly(root, path)
        except OSError as e:
            raise FailedPrecondition(f"cannot make {path} read-only: {e.strerror}") from None
    if fs.readonly:
        try:
            libc.mount_setattr(root, libc.MOUNT_ATTR_RDONLY)
        except OSError as e:
            raise FailedPrecondition(f"cannot make the root read-only: {e.strerror}") from None


def chdir_in_root(cwd: str) -> None:
    """Into `cwd`, created if missing as runc creates it, resolved inside the root."""
    root = os.open("/", _PATH | os.O_DIRECTORY)
    try:
        fd = _mountpoint(root, cwd, False)
    except OSError as e:
        raise FailedPrecondition(f"process.cwd {cwd}: {e.strerror or e}") from None
    finally:
        os.close(root)
    try:
        os.fchdir(fd)
    except OSError as e:
        raise FailedPrecondition(f"process.cwd {cwd}: {e.strerror or e}") from None
    finally:
        os.close(fd)
