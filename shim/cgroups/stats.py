"""Reading a cgroup's kernel files into containerd's io.containerd.cgroups.v1/v2 Metrics.

Whatever files this kernel and hierarchy provide are read; missing ones leave their fields
unset, and keys the message does not know are skipped, so newer kernels never break Stats.

A deliberate exception to the rule that protobuf stays in shim/task/service.py and
shim/events.py (README, "Architecture"): this module builds the Metrics messages themselves,
and ``TaskService.Stats`` takes them unchanged from ``Cgroup.metrics()`` (of the cgroup
``Tasks.cgroup_of()`` names) and only packs them into the response's ``Any``. Their 100-odd
scalar fields mirror the kernel's files key for key (``_set_uint`` fills most of them by
name), so a plain-Python copy of the schema would only be translated back field by field.
Nothing else under shim/cgroups/ builds or reads a message (``cgroup.py`` names the types in
annotations only), and the generated modules are imported when Stats is first called (the
warm runtime has them loaded already, shim/warm/boot.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from shim.cgroups.files import _flat_keyed, _opt

if TYPE_CHECKING:
    from shim.api.cgroups.v1 import metrics_pb2 as v1_pb
    from shim.api.cgroups.v2 import metrics_pb2 as v2_pb

UINT64_MAX = 2**64 - 1

# memory.stat keys whose Metrics field is spelled differently (the rest match, total_* included).
_V1_MEMORY_RENAMES = {
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
}
_V1_BLKIO_FIELDS = (
    "io_service_bytes_recursive",
    "io_serviced_recursive",
    "io_queued_recursive",
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "io_time_recursive",
    "sectors_recursive",
)


def _metrics_v1(dirs: Mapping[str, str]) -> v1_pb.Metrics:
    from shim.api.cgroups.v1 import metrics_pb2 as pb

    m = pb.Metrics()
    if "pids" in dirs:
        _pids(m.pids, dirs["pids"], unlimited=0)  # containerd's v1 reports "max" as 0
    if (d := dirs.get("cpuacct")) and (total := _opt(d, "cpuacct.usage")) is not None:
        usage = m.cpu.usage
        usage.total = _uint(total)
        usage.per_cpu.extend(_uint(x) for x in (_opt(d, "cpuacct.usage_percpu") or "").split())
        user, system = _opt(d, "cpuacct.usage_user"), _opt(d, "cpuacct.usage_sys")
        if user is not None and system is not None:
            usage.user, usage.kernel = _uint(user), _uint(system)
        else:  # older kernels: only clock ticks
            ticks = _flat_keyed(_opt(d, "cpuacct.stat") or "")
            ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            usage.user = ticks.get("user", 0) * ns_per_tick
            usage.kernel = ticks.get("system", 0) * ns_per_tick
    if (d := dirs.get("cpu")) and (text := _opt(d, "cpu.stat")) is not None:
        stat = _flat_keyed(text)
        throttle = m.cpu.throttling
        throttle.periods = stat.get("nr_periods", 0)
        throttle.throttled_periods = stat.get("nr_throttled", 0)
        throttle.throttled_time = stat.get("throttled_time", 0)
    if (d := dirs.get("memory")) and (text := _opt(d, "memory.stat")) is not None:
        mem = m.memory
        for key, value in _flat_keyed(text).items():
            is_total, base = key.startswith("total_"), key.removeprefix("total_")
            name = ("total_" if is_total else "") + _V1_MEMORY_RENAMES.get(base, base)
            _set_uint(mem, name, value)
        for entry, prefix in (
            (mem.usage, "memory"),
            (mem.swap, "memory.memsw"),
            (mem.kernel, "memory.kmem"),
            (mem.kernel_tcp, "memory.kmem.tcp"),
        ):
            if (current := _opt(d, prefix + ".usage_in_bytes")) is not None:
                entry.usage = _uint(current)
                entry.limit = _uint(_opt(d, prefix + ".limit_in_bytes") or "0")
                entry.max = _uint(_opt(d, prefix + ".max_usage_in_bytes") or "0")
                entry.failcnt = _uint(_opt(d, prefix + ".failcnt") or "0")
        if (oom := _opt(d, "memory.oom_control")) is not None:
            for key, value in _flat_keyed(oom).items():
                _set_uint(m.memory_oom_control, key, value)
    if d := dirs.get("blkio"):
        # Present even when no device has seen I/O: clients (nerdctl stats) dereference it.
        m.blkio.SetInParent()
        for name in _V1_BLKIO_FIELDS:
            # The non-throttle files are only filled by the CFQ/BFQ schedulers.
            text = _opt(d, "blkio." + name) or _opt(d, "blkio.throttle." + name) or ""
            for op, major, minor, value in _blkio_lines(text):
                getattr(m.blkio, name).add(
                    op=op, device=_device(major, minor), major=major, minor=minor, value=value
                )
    return m


def _metrics_v2(leaf: str) -> v2_pb.Metrics:
    from shim.api.cgroups.v2 import metrics_pb2 as pb

    m = pb.Metrics()
    if os.path.exists(os.path.join(leaf, "pids.current")):
        _pids(m.pids, leaf, unlimited=UINT64_MAX)
    if (text := _opt(leaf, "cpu.stat")) is not None:
        for key, value in _flat_keyed(text).items():
            _set_uint(m.cpu, key, value)
    if (text := _opt(leaf, "memory.stat")) is not None:
        stat = _flat_keyed(text)
        # Since Linux 5.9 the workingset counters are split into _anon and _file.
        for key in ("workingset_refault", "workingset_activate"):
            if key not in stat:
                stat[key] = stat.get(key + "_anon", 0) + stat.get(key + "_file", 0)
        for key, value in stat.items():
            _set_uint(m.memory, key, value)
        for name, file in (
            ("usage", "memory.current"),
            ("usage_limit", "memory.max"),
            ("swap_usage", "memory.swap.current"),
            ("swap_limit", "memory.swap.max"),
        ):
            if (raw := _opt(leaf, file)) is not None:
                setattr(m.memory, name, _uint(raw, UINT64_MAX))
    if (text := _opt(leaf, "memory.events")) is not None:
        for key, value in _flat_keyed(text).items():
            _set_uint(m.memory_events, key, value)
    if os.path.exists(os.path.join(leaf, "io.stat")):
        m.io.SetInParent()  # as blkio on v1: present even before any I/O
    for line in (_opt(leaf, "io.stat") or "").splitlines():
        device, *pairs = line.split()
        major, _, minor = device.partition(":")
        entry = m.io.usage.add(major=_uint(major), minor=_uint(minor))
        for pair in pairs:
            field, _, number = pair.partition("=")
            _set_uint(entry, field, _uint(number))
    return m


def _pids(msg: v1_pb.PidsStat | v2_pb.PidsStat, leaf: str, unlimited: int) -> None:
    msg.current = _uint(_opt(leaf, "pids.current") or "0")
    msg.limit = _uint(_opt(leaf, "pids.max") or "max", unlimited)


def _blkio_lines(text: str) -> Iterator[tuple[str, int, int, int]]:
    """``8:0 Read 4096`` lines; the trailing ``Total`` line is dropped."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0]:
            major, _, minor = parts[0].partition(":")
            yield parts[1], _uint(major), _uint(minor), _uint(parts[2])


@functools.cache
def _device(major: int, minor: int) -> str:
    """``/dev/<name>`` of a block device number, as containerd reports it; "" if unknown."""
    uevent = _opt(f"/sys/dev/block/{major}:{minor}", "uevent") or ""
    for line in uevent.splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line.removeprefix("DEVNAME=")
    return ""


def _set_uint(msg: Message, name: str, value: int) -> None:
    """Set a scalar uint64 field if the message has one by that name (kernels add keys)."""
    desc = msg.DESCRIPTOR.fields_by_name.get(name)
    if desc is not None and desc.cpp_type == desc.CPPTYPE_UINT64 and not desc.is_repeated:
        setattr(msg, name, min(max(value, 0), UINT64_MAX))


def _uint(text: str, unlimited: int = UINT64_MAX) -> int:
    """A counter file's value; "max" becomes ``unlimited``; negatives (-1) become 0."""
    text = text.strip()
    if text == "max":
        return unlimited
    try:
        return min(max(int(text), 0), UINT64_MAX)
    except ValueError:
        return 0
