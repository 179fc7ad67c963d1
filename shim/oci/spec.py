"""The OCI runtime spec (a bundle's config.json) as frozen, typed values.

containerd writes config.json before it runs `start`; the shim reads it in `start` (for the
grouping annotations), in Create (to run the container) and in `delete` (to find the cgroup).
Only what the shim acts on is typed here; `linux.resources` and `linux.seccomp` stay the spec's
own JSON mappings, because shim/cgroups/ and libseccomp take them key by key exactly as the
OCI schema spells them, and the rest of `linux` (devices, masked and read-only paths) is
checked where it is used (shim/confine/policy.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shim.errors import InvalidArgument, NotFound
from shim.io.fds import read_regular

CONFIG_FILE = "config.json"
CONFIG_LIMIT = 16 << 20  # bytes; a spec is a few KiB, this only refuses a runaway file

# The annotations the shim reads: the two that containerd's CRI plugin sets on every container
# of a pod, and the runc shim's grouping annotation, honoured the same way.
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_RUNC_GROUP = "io.containerd.runc.v2.group"


@dataclass(frozen=True, slots=True)
class Mount:
    """One entry of the spec's `mounts`: where the container expects a filesystem."""

    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()

    @property
    def readonly(self) -> bool:
        """True when the options make the mount read-only (the last of ro/rw wins)."""
        ro = False
        for opt in self.options:
            if opt == "ro":
                ro = True
            elif opt == "rw":
                ro = False
        return ro

    @property
    def is_bind(self) -> bool:
        return self.type == "bind" or "bind" in self.options or "rbind" in self.options


@dataclass(frozen=True, slots=True)
class Namespace:
    """A `linux.namespaces` entry; `path` set means "join this one" (CRI pods)."""

    type: str
    path: str = ""


@dataclass(frozen=True, slots=True)
class User:
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    terminal: bool = False
    user: User = field(default_factory=User)
    capabilities: Mapping[str, Any] | None = None  # the five sets, as names (shim/confine)
    rlimits: tuple[Mapping[str, Any], ...] = ()
    no_new_privileges: bool = False
    oom_score_adj: int | None = None

    def getenv(self, name: str) -> str | None:
        """The value of `name` in the process env; see :func:`getenv`."""
        return getenv(self.env, name)


def getenv(env: Iterable[str], name: str) -> str | None:
    """The value of `name` in a `KEY=value` list, or None when unset.

    When `name` is assigned more than once the last assignment wins, as when the entries are
    applied in order with setenv(3). The entrypoint's PATH lookup reads PATH this way.
    """
    prefix = name + "="
    value = None
    for item in env:
        if item.startswith(prefix):
            value = item[len(prefix) :]
    return value


@dataclass(frozen=True, slots=True)
class Spec:
    """The parts of config.json the shim acts on."""

    process: Process
    root_path: str = "rootfs"
    root_readonly: bool = False
    hostname: str = ""
    mounts: tuple[Mount, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    cgroups_path: str = ""
    resources: Mapping[str, Any] = field(default_factory=dict)
    namespaces: tuple[Namespace, ...] = ()
    seccomp: Mapping[str, Any] | None = None  # linux.seccomp, as JSON (libseccomp reads it)
    linux: Mapping[str, Any] = field(default_factory=dict)  # the raw section (shim/confine)

    @property
    def memory_limit(self) -> int | None:
        """linux.resources.memory.limit in bytes, or None when unset or unlimited (<= 0)."""
        memory = self.resources.get("memory") or {}
        limit = memory.get("limit")
        if isinstance(limit, int) and limit > 0:
            return limit
        return None


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"config.json: {what} must be a list of strings")
    return tuple(value)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"config.json: {what} must be an object")
    return value


def parse(doc: Any) -> Spec:
    """Build a Spec from the decoded config.json; malformed input raises InvalidArgument."""
    doc = _mapping(doc, "the document")
    proc = _mapping(doc.get("process"), "process")
    args = _str_tuple(proc.get("args"), "process.args")
    if not args:
        raise InvalidArgument("config.json: process.args is empty; there is nothing to run")
    user_doc = _mapping(proc.get("user"), "process.user")
    user = User(
        uid=int(user_doc.get("uid", 0)),
        gid=int(user_doc.get("gid", 0)),
        additional_gids=tuple(int(g) for g in user_doc.get("additionalGids") or ()),
    )
    rlimits = proc.get("rlimits") or []
    if not isinstance(rlimits, list):
        raise InvalidArgument("config.json: process.rlimits must be a list")
    oom = proc.get("oomScoreAdj")
    if oom is not None and (not isinstance(oom, int) or not -1000 <= oom <= 1000):
        raise InvalidArgument("config.json: process.oomScoreAdj must be an integer in -1000..1000")
    caps = proc.get("capabilities")
    process = Process(
        args=args,
        env=_str_tuple(proc.get("env"), "process.env"),
        cwd=str(proc.get("cwd") or "/"),
        terminal=bool(proc.get("terminal", False)),
        user=user,
        capabilities=_mapping(caps, "process.capabilities") if caps is not None else None,
        rlimits=tuple(rlimits),
        no_new_privileges=bool(proc.get("noNewPrivileges", False)),
        oom_score_adj=oom,
    )
    root = _mapping(doc.get("root"), "root")
    mounts = []
    for i, m in enumerate(doc.get("mounts") or ()):
        m = _mapping(m, f"mounts[{i}]")
        if not isinstance(m.get("destination"), str):
            raise InvalidArgument(f"config.json: mounts[{i}].destination must be a string")
        mounts.append(
            Mount(
                destination=m["destination"],
                type=str(m.get("type") or ""),
                source=str(m.get("source") or ""),
                options=_str_tuple(m.get("options"), f"mounts[{i}].options"),
            )
        )
    linux = _mapping(doc.get("linux"), "linux")
    namespaces = tuple(
        Namespace(type=str(ns.get("type", "")), path=str(ns.get("path") or ""))
        for ns in (linux.get("namespaces") or ())
        if isinstance(ns, dict)
    )
    annotations = {
        str(k): str(v) for k, v in _mapping(doc.get("annotations"), "annotations").items()
    }
    return Spec(
        process=process,
        root_path=str(root.get("path") or "rootfs"),
        root_readonly=bool(root.get("readonly", False)),
        hostname=str(doc.get("hostname") or ""),
        mounts=tuple(mounts),
        annotations=annotations,
        cgroups_path=str(linux.get("cgroupsPath") or ""),
        resources=_mapping(linux.get("resources"), "linux.resources"),
        namespaces=namespaces,
        seccomp=_mapping(linux.get("seccomp"), "linux.seccomp") or None,
        linux=linux,
    )


def read_document(bundle: str) -> dict[str, Any]:
    """The raw config.json of a bundle. Missing -> NotFound, not JSON -> InvalidArgument."""
    path = os.path.join(bundle, CONFIG_FILE)
    if not os.path.exists(path):
        raise NotFound(f"{path} does not exist")
    raw = read_regular(path, "spec", CONFIG_LIMIT)  # never waits on a FIFO put there
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{path} is not a JSON object")
    return doc


def load(bundle: str) -> Spec:
    """Read and parse `<bundle>/config.json`."""
    return parse(read_document(bundle))


def group_id(annotations: Mapping[str, str], container_id: str) -> str:
    """Which shim serves a container: the pod's sandbox id, else the container's own id.

    The same rule as containerd's runc shim, so one shim serves every container of a pod.
    """
    return (
        annotations.get(ANNOTATION_RUNC_GROUP)
        or annotations.get(ANNOTATION_SANDBOX_ID)
        or container_id
    )
