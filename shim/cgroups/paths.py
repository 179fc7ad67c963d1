"""Where a container's cgroup lives: the mounted hierarchies and the spec's cgroupsPath rules.

Pure string and mountinfo logic, kept apart from any cgroup file writes so the path rules (the
systemd ``slice:prefix:name`` form included) can be reasoned about and tested on their own.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass

from shim.errors import FailedPrecondition, InvalidArgument

CGROUP_ROOT = "/sys/fs/cgroup"
# v1 hierarchies a container lives in. cpuset is left out on purpose: a fresh cpuset cgroup has
# empty cpus/mems and refuses members until both are copied from the parent.
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer", "blkio")
V2_CONTROLLERS = ("cpu", "memory", "pids", "io")


class Version(enum.Enum):
    V1 = "v1"
    V2 = "v2"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the hierarchies are mounted: v1 maps controller -> mount point, v2 has key ""."""

    version: Version
    mounts: Mapping[str, str]


def detect_layout(mountinfo: str = "/proc/self/mountinfo", root: str = CGROUP_ROOT) -> Layout:
    """v2 when ``root`` itself is a cgroup2 mount (pure v2), else the v1 hierarchies under it.

    A hybrid host's empty ``unified`` mount is ignored: no controller lives there.
    """
    v1: dict[str, str] = {}
    with open(mountinfo, encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = _unescape(left.split()[4])
            fstype, _source, options = ([*right.split(), "", ""])[:3]
            if fstype == "cgroup2" and point == root:
                return Layout(Version.V2, {"": point})
            if fstype == "cgroup" and os.path.dirname(point) == root:
                for opt in options.split(","):
                    if opt in V1_CONTROLLERS:
                        v1[opt] = point
    if not v1:
        raise FailedPrecondition(f"no cgroup v1 or v2 filesystem is mounted at {root}")
    return Layout(Version.V1, v1)


def _unescape(field_: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field_ = field_.replace("\\" + code, chr(int(code, 8)))
    return field_


def cgroupfs_path(cgroups_path: str) -> str:
    """The spec's cgroupsPath as "/a/b" below the root of every hierarchy.

    ``"/ns/id"`` and ``"parent/id"`` are both taken from the hierarchy root (a relative path is
    not resolved against the shim's own cgroup). ``"slice:prefix:name"`` is the systemd form.
    Raises InvalidArgument for an empty path, ``..``, NUL, or a path naming the root itself.
    """
    if "\0" in cgroups_path:
        raise InvalidArgument(f"cgroupsPath {cgroups_path!r} contains NUL")
    if ":" in cgroups_path:
        parts = cgroups_path.split(":")
        if len(parts) != 3:
            raise InvalidArgument(f"cgroupsPath {cgroups_path!r} is not slice:prefix:name")
        return systemd_path(*parts)
    names = [p for p in cgroups_path.split("/") if p not in ("", ".")]
    if ".." in names:
        raise InvalidArgument(f"cgroupsPath {cgroups_path!r} must not contain '..'")
    if not names:
        raise InvalidArgument(f"cgroupsPath {cgroups_path!r} names no cgroup below the root")
    return "/" + "/".join(names)


def systemd_path(slice_: str, prefix: str, name: str) -> str:
    """Where systemd would put ``slice:prefix:name``: the expanded slice, then the unit.

    The unit is ``<prefix>-<name>.scope`` (``<name>.scope`` without a prefix), or ``name``
    itself when it is a slice. An empty slice means ``system.slice``, as in runc.
    """
    for part, what in ((slice_, "slice"), (prefix, "prefix"), (name, "name")):
        if "/" in part or part in (".", ".."):
            raise InvalidArgument(f"systemd cgroup {what} {part!r} is not a unit name part")
    if not name:
        raise InvalidArgument("systemd cgroupsPath has an empty name")
    if name.endswith(".slice"):
        unit = name
    else:
        unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    parent = expand_slice(slice_ or "system.slice")
    return f"{parent.rstrip('/')}/{unit}"


def expand_slice(slice_: str) -> str:
    """``a-b-c.slice`` -> ``/a.slice/a-b.slice/a-b-c.slice``; ``-.slice`` (the root) -> ``/``."""
    if slice_ == "-.slice":
        return "/"
    stem = slice_.removesuffix(".slice")
    if (
        stem == slice_
        or not stem
        or "/" in stem
        or stem.startswith("-")
        or stem.endswith("-")
        or "--" in stem
    ):
        raise InvalidArgument(f"{slice_!r} is not a valid systemd slice name")
    words = stem.split("-")
    return "".join("/" + "-".join(words[: i + 1]) + ".slice" for i in range(len(words)))
