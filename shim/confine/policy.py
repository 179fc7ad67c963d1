"""What confinement a wasm container gets, decided from its spec at Create.

`confinement()` reads the spec once, in the daemon, and refuses what cannot be honoured
(an unknown mount type, a bind source that does not exist, a user namespace, an unknown
capability or rlimit, a seccomp profile libseccomp rejects) with a message naming the
entry, so that Create fails and nothing is half-done. The result is plain frozen values:
they cross to the spawner as JSON (`to_wire`/`from_wire`), and the container process acts
on them without reading the spec again (shim/proc/child.py).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shim.confine.privileges import (
    Capabilities,
    Privileges,
    capabilities_from_spec,
    rlimits_from_spec,
)
from shim.errors import InvalidArgument
from shim.oci import mounts as m
from shim.oci.namespaces import CLONE_FLAGS
from shim.oci.spec import Mount, Spec

CLONE_NEWNS = CLONE_FLAGS["mount"]
CLONE_NEWCGROUP = CLONE_FLAGS["cgroup"]
CLONE_NEWUTS = CLONE_FLAGS["uts"]
CLONE_NEWIPC = CLONE_FLAGS["ipc"]
CLONE_NEWPID = CLONE_FLAGS["pid"]
CLONE_NEWNET = CLONE_FLAGS["network"]

# Namespaces the container process unshares (no path) or joins (a path) itself, by spec name
# -> (nsfs name, CLONE flag). pid is the spawner's (its fork creates the namespace's init);
# mount is always new (the pivot needs it); user and time are refused.
PROCESS_NAMESPACES = {
    "network": ("net", CLONE_NEWNET),
    "ipc": ("ipc", CLONE_NEWIPC),
    "uts": ("uts", CLONE_NEWUTS),
    "cgroup": ("cgroup", CLONE_NEWCGROUP),
}

BIND_TYPES = frozenset({"bind"})
CGROUP_TYPES = frozenset({"cgroup", "cgroup2"})
FS_TYPES = frozenset({"tmpfs", "proc", "sysfs", "devpts", "mqueue"})
SUPPORTED_TYPES = ", ".join(sorted(BIND_TYPES | CGROUP_TYPES | FS_TYPES))

PID_HOST = ""  # the spec has no pid namespace: the guest shares the daemon's
PID_NEW = "new"  # else PidMode is the path of a namespace to join


@dataclass(frozen=True, slots=True)
class ContainerMount:
    """One spec mount, normalised: `type` is "bind" for every bind, the destination absolute."""

    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Device:
    """A device node the container gets in its /dev."""

    path: str
    type: str  # c, b, u or p
    major: int = 0
    minor: int = 0
    mode: int = 0o666
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class Filesystem:
    """The container's tree, built by shim/confine/rootfs.py."""

    rootfs: str  # host path of the mounted rootfs: the new "/"
    readonly: bool = False
    mounts: tuple[ContainerMount, ...] = ()
    devices: tuple[Device, ...] = ()
    dev_is_tmpfs: bool = False  # a tmpfs at /dev: it gets the default devices
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    cgroup_dirs: tuple[tuple[str, str], ...] = ()  # (name under a cgroup mount, host dir)
    root_propagation: int = m.MS_SLAVE | m.MS_REC


@dataclass(frozen=True, slots=True)
class Confinement:
    """Everything the container process does to itself besides cgroup, stdio and the engine."""

    filesystem: Filesystem
    privileges: Privileges = field(default_factory=Privileges)
    seccomp: Mapping[str, Any] | None = None  # the spec's profile, as JSON
    unshare: int = CLONE_NEWNS  # CLONE_* flags of the namespaces made new
    pid: str = PID_HOST  # PID_HOST, PID_NEW or the path of a pid namespace to join
    cwd: str = "/"  # inside the container

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Confinement:
        fs = dict(d["filesystem"])
        fs["mounts"] = tuple(
            ContainerMount(**{**x, "options": tuple(x["options"])}) for x in fs["mounts"]
        )
        fs["devices"] = tuple(Device(**x) for x in fs["devices"])
        fs["masked_paths"] = tuple(fs["masked_paths"])
        fs["readonly_paths"] = tuple(fs["readonly_paths"])
        fs["cgroup_dirs"] = tuple((str(a), str(b)) for a, b in fs["cgroup_dirs"])
        p = dict(d["privileges"])
        p["additional_gids"] = tuple(p["additional_gids"])
        p["capabilities"] = Capabilities(**p["capabilities"])
        p["rlimits"] = tuple((int(a), int(b), int(c)) for a, b, c in p["rlimits"])
        return cls(
            filesystem=Filesystem(**fs),
            privileges=Privileges(**p),
            seccomp=d["seccomp"],
            unshare=int(d["unshare"]),
            pid=str(d["pid"]),
            cwd=str(d["cwd"]),
        )


def _destination(dest: str, what: str) -> str:
    if not dest or "\0" in dest:
        raise InvalidArgument(f"config.json: {what} has no usable destination")
    norm = posixpath.normpath("/" + dest.lstrip("/"))
    if norm == "/":
        raise InvalidArgument(f"config.json: {what}: a mount over the container's root")
    return norm


def container_mount(mount: Mount) -> ContainerMount:
    """One spec mount checked: its type is one the shim mounts and a bind's source exists."""
    what = f"mount {mount.destination or '?'}"
    destination = _destination(mount.destination, what)
    source, options = mount.source, mount.options
    if mount.is_bind:
        if not source or not os.path.exists(source):
            raise InvalidArgument(
                f"{what}: bind source {source!r} does not exist (runc refuses it too; "
                "create it on the host first)"
            )
        return ContainerMount(destination, "bind", source, options)
    if mount.type not in CGROUP_TYPES | FS_TYPES:
        raise InvalidArgument(
            f"{what}: type {mount.type!r} is not supported by the wasmtime shim (supported: "
            f"{SUPPORTED_TYPES})"
        )
    return ContainerMount(destination, mount.type, source, options)


def _devices(items: Any) -> tuple[Device, ...]:
    out = []
    for i, d in enumerate(items or ()):
        what = f"config.json: linux.devices[{i}]"
        if not isinstance(d, Mapping) or not isinstance(d.get("path"), str):
            raise InvalidArgument(f"{what} must be an object with a path")
        path = posixpath.normpath("/" + d["path"].lstrip("/"))
        if not path.startswith("/dev/"):
            raise InvalidArgument(f"{what}: {path} is not under /dev")
        if d.get("type") not in ("c", "b", "u", "p"):
            raise InvalidArgument(f"{what}: type {d.get('type')!r} is not c, b, u or p")
        try:
            out.append(
                Device(
                    path=path,
                    type=d["type"],
                    major=int(d.get("major", 0)),
                    minor=int(d.get("minor", 0)),
                    mode=int(d.get("fileMode", 0o666)),
                    uid=int(d.get("uid", 0)),
                    gid=int(d.get("gid", 0)),
                )
            )
        except (TypeError, ValueError):
            raise InvalidArgument(f"{what}: numbers must be integers") from None
        dev = out[-1]
        if not (0 <= dev.major < 1 << 32 and 0 <= dev.minor < 1 << 32 and 0 <= dev.mode < 1 << 16):
            raise InvalidArgument(f"{what}: major, minor or fileMode out of range")
    return tuple(out)


def _paths(items: Any, what: str) -> tuple[str, ...]:
    if not items:
        return ()
    if not isinstance(items, list) or not all(isinstance(p, str) and p for p in items):
        raise InvalidArgument(f"config.json: {what} must be a list of paths")
    return tuple(posixpath.normpath("/" + p.lstrip("/")) for p in items)


def _propagation(name: str) -> int:
    if not name:
        return m.MS_SLAVE | m.MS_REC
    flags = m.parse_mount_options([name]).propagation
    if not flags:
        raise InvalidArgument(f"config.json: linux.rootfsPropagation {name!r} is unknown")
    return flags


def namespaces(
    entries: tuple[tuple[str, str], ...],
) -> tuple[int, tuple[tuple[str, str], ...], str]:
    """(unshare flags, (nsfs type, path) to join, pid mode) from the spec's namespaces."""
    unshare = CLONE_NEWNS
    join: list[tuple[str, str]] = []
    pid = PID_HOST
    for type_, path in entries:
        if type_ == "pid":
            pid = path or PID_NEW
        elif type_ in PROCESS_NAMESPACES:
            nsfs, flag = PROCESS_NAMESPACES[type_]
            if path:
                join.append((nsfs, path))
            else:
                unshare |= flag
        elif type_ == "mount":
            if path:
                raise InvalidArgument(
                    "config.json: joining an existing mount namespace is not supported by the "
                    "wasmtime shim (every wasm container gets its own, with its rootfs as /)"
                )
        else:
            raise InvalidArgument(
                f"config.json: a {type_!r} namespace is not supported by the wasmtime shim"
            )
    return unshare, tuple(join), pid


def check_seccomp(profile: Mapping[str, Any] | None) -> None:
    """Compile the profile once at Create so a bad one fails there, with libseccomp's word."""
    if profile:
        from shim.confine import seccomp

        seccomp.check(profile)


def cgroup_dirs(join_files: tuple[str, ...], unified: bool) -> tuple[tuple[str, str], ...]:
    """What a cgroup mount shows the guest: its own cgroup's directory per hierarchy (v1,
    named as the host names the hierarchy) or the one directory (v2)."""
    dirs = [os.path.dirname(f) for f in join_files]
    if unified:
        return tuple(("", d) for d in dirs[:1])
    out = []
    for d in dirs:
        parts = d.split(os.sep)
        # /sys/fs/cgroup/<hierarchy>/<path...>: the hierarchy is the 5th component
        out.append((parts[4] if len(parts) > 4 else os.path.basename(d), d))
    return tuple(out)


def filesystem(
    rootfs: str,
    readonly: bool,
    spec_mounts: tuple[ContainerMount, ...],
    linux: Mapping[str, Any],
    cgroup: tuple[tuple[str, str], ...],
) -> Filesystem:
    """The container's tree from already-checked mounts and the spec's `linux` section."""
    return Filesystem(
        rootfs=rootfs,
        readonly=readonly,
        mounts=spec_mounts,
        devices=_devices(linux.get("devices")),
        dev_is_tmpfs=any(x.destination == "/dev" and x.type == "tmpfs" for x in spec_mounts),
        masked_paths=_paths(linux.get("maskedPaths"), "linux.maskedPaths"),
        readonly_paths=_paths(linux.get("readonlyPaths"), "linux.readonlyPaths"),
        cgroup_dirs=cgroup,
        root_propagation=_propagation(str(linux.get("rootfsPropagation") or "")),
    )


def confinement(
    spec: Spec, rootfs: str, cgroup: tuple[tuple[str, str], ...]
) -> tuple[Confinement, tuple[tuple[str, str], ...]]:
    """The container's confinement and the namespaces it joins by path; InvalidArgument (or
    FailedPrecondition when libseccomp is missing) names what cannot be honoured."""
    spec_mounts = tuple(container_mount(x) for x in spec.mounts)
    unshare, join, pid = namespaces(tuple((ns.type, ns.path) for ns in spec.namespaces))
    check_seccomp(spec.seccomp)
    proc = spec.process
    privileges = Privileges(
        uid=proc.user.uid,
        gid=proc.user.gid,
        additional_gids=proc.user.additional_gids,
        capabilities=capabilities_from_spec(proc.capabilities),
        no_new_privileges=proc.no_new_privileges,
        rlimits=rlimits_from_spec(proc.rlimits),
        oom_score_adj=proc.oom_score_adj,
    )
    fs = filesystem(rootfs, spec.root_readonly, spec_mounts, spec.linux, cgroup)
    cwd = posixpath.normpath("/" + proc.cwd.lstrip("/"))
    conf = Confinement(
        filesystem=fs,
        privileges=privileges,
        seccomp=spec.seccomp,
        unshare=unshare,
        pid=pid,
        cwd=cwd,
    )
    return conf, join
