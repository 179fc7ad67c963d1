"""Per-container cgroups on cgroup v1 (one hierarchy per controller) and v2 (one unified tree).

A wasm container has no runc underneath, so the shim does runc's cgroup work for it: turn the
spec's ``linux.cgroupsPath`` into one directory per hierarchy, write ``linux.resources`` into the
kernel files, let the container process join, read the files back as containerd's Metrics
messages, and remove exactly the directory it made; a cgroupsPath that exists already is not
its to take (``cgroup.py``, "Ownership"). The systemd form of the path is converted to the
cgroupfs path systemd would use and created directly; systemd is never asked to make a scope,
so it does not know about (or manage) these cgroups. For a native container runc makes the
cgroup; the shim first refuses a path that exists already (``Cgroup.require_absent``: runc would
join it), then only reads it (``Cgroup.load(owned=False)``: stats, members, OOM kills). Every
call is a plain file operation; the daemon runs them off the event loop, and a forked child
joins by writing into ``join_files()`` itself.

The package is split by concern: ``paths`` (cgroupsPath rules, layout detection), ``limits``
(linux.resources -> kernel files), ``stats`` (kernel files -> Metrics messages), ``cgroup`` (the
Cgroup object tying them together) and ``files`` (the small file helpers they share). Callers
import from ``shim.cgroups`` only; the submodules are not a public contract.
"""

from __future__ import annotations

from shim.cgroups.cgroup import Cgroup
from shim.cgroups.limits import Resources, cpu_weight, unapplied_changes
from shim.cgroups.paths import (
    CGROUP_ROOT,
    V1_CONTROLLERS,
    V2_CONTROLLERS,
    Layout,
    Version,
    cgroupfs_path,
    detect_layout,
    expand_slice,
    systemd_path,
)
from shim.cgroups.stats import UINT64_MAX

__all__ = [
    "CGROUP_ROOT",
    "UINT64_MAX",
    "V1_CONTROLLERS",
    "V2_CONTROLLERS",
    "Cgroup",
    "Layout",
    "Resources",
    "Version",
    "cgroupfs_path",
    "cpu_weight",
    "detect_layout",
    "expand_slice",
    "systemd_path",
    "unapplied_changes",
]
