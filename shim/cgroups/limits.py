"""The spec's ``linux.resources`` as a validated value, and writing it into v1 or v2 files.

Validation happens before any directory exists (so a bad spec leaves nothing behind); the write
order and the v1 -> v2 unit conversions are what the kernel and runc's conventions require.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shim.cgroups.files import _read, _write
from shim.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Resources:
    """The subset of the OCI ``linux.resources`` this shim applies. None (or 0) = leave as is."""

    memory_limit: int | None = None
    memory_swap: int | None = None  # memory + swap, as in OCI and v1's memsw
    memory_reservation: int | None = None
    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    pids_limit: int | None = None

    @classmethod
    def from_spec(cls, resources: Mapping[str, Any] | None) -> Resources:
        """Validate the JSON dict first, so a bad spec fails before any directory exists."""
        res = {} if resources is None else resources
        if not isinstance(res, Mapping):
            raise InvalidArgument("linux.resources is not an object")

        def num(section: str, key: str) -> int | None:
            block = res.get(section)
            if block is None:
                return None
            if not isinstance(block, Mapping):
                raise InvalidArgument(f"linux.resources.{section} is not an object")
            value = block.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"linux.resources.{section}.{key} is not an integer")
            return value or None

        out = cls(
            memory_limit=num("memory", "limit"),
            memory_swap=num("memory", "swap"),
            memory_reservation=num("memory", "reservation"),
            cpu_shares=num("cpu", "shares"),
            cpu_quota=num("cpu", "quota"),
            cpu_period=num("cpu", "period"),
            pids_limit=num("pids", "limit"),
        )
        swap, limit = out.memory_swap, out.memory_limit
        if swap is not None and swap > 0 and (limit is None or limit < 0 or swap < limit):
            raise InvalidArgument(f"memory.swap {swap} needs a memory.limit no larger than it")
        return out


# What Resources applies, by section: any other entry of linux.resources is left alone.
APPLIED: Mapping[str, frozenset[str]] = {
    "memory": frozenset({"limit", "swap", "reservation"}),
    "cpu": frozenset({"shares", "quota", "period"}),
    "pids": frozenset({"limit"}),
}


def unapplied_changes(current: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The entries of ``new`` (an Update's linux.resources) that differ from ``current`` and
    that Resources does not apply, as dotted names (``cpu.cpus``, ``blockIO``).

    An entry that is absent, null or empty in ``new`` asks for no change, and one equal to
    ``current``'s (CRI resends the whole section, devices included) changes nothing: neither
    is named. The caller refuses the rest rather than pretend it applied them."""
    out: list[str] = []
    for section, value in new.items():
        if _empty(value) or value == current.get(section):
            continue
        applied = APPLIED.get(section)
        if applied is None or not isinstance(value, Mapping):
            out.append(section)
            continue
        old = current.get(section)
        old_block: Mapping[str, Any] = old if isinstance(old, Mapping) else {}
        for key, setting in value.items():
            if key not in applied and not _empty(setting) and setting != old_block.get(key):
                out.append(f"{section}.{key}")
    return out


def _empty(value: object) -> bool:
    return value is None or (isinstance(value, (str, list, dict, Mapping)) and not value)


def cpu_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2, 262144] -> v2 cpu.weight [1, 10000], the mapping runc uses."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def _apply_v1(dirs: Mapping[str, str], res: Resources) -> None:
    if "memory" in dirs:
        mem = dirs["memory"]
        limit_file = os.path.join(mem, "memory.limit_in_bytes")
        swap_file = os.path.join(mem, "memory.memsw.limit_in_bytes")
        writes: list[tuple[str, int]] = []
        if res.memory_limit is not None:
            writes.append((limit_file, res.memory_limit))
        if res.memory_swap is not None:
            current = _read(swap_file, missing="-1").strip()
            # The kernel keeps memsw >= memory at every step: raise memsw first when it is the
            # smaller one today, lower memory first otherwise.
            raising = res.memory_limit is not None and int(current) < res.memory_limit
            writes.insert(0 if raising else len(writes), (swap_file, res.memory_swap))
        if res.memory_reservation is not None:
            writes.append((os.path.join(mem, "memory.soft_limit_in_bytes"), res.memory_reservation))
        for path, number in writes:
            _write(path, str(number))
    if "cpu" in dirs:
        cpu = dirs["cpu"]
        for name, setting in (
            ("cpu.shares", res.cpu_shares),
            ("cpu.cfs_period_us", res.cpu_period),
            ("cpu.cfs_quota_us", res.cpu_quota),
        ):
            if setting is not None:
                _write(os.path.join(cpu, name), str(setting))
    if "pids" in dirs and res.pids_limit is not None:
        pids_max = str(res.pids_limit) if res.pids_limit > 0 else "max"
        _write(os.path.join(dirs["pids"], "pids.max"), pids_max)


def _apply_v2(leaf: str, res: Resources) -> None:
    def limit(value: int) -> str:
        return "max" if value < 0 else str(value)

    writes: list[tuple[str, str]] = []
    if res.memory_limit is not None:
        writes.append(("memory.max", limit(res.memory_limit)))
    if res.memory_swap is not None:
        # v2's swap.max is swap alone; OCI's swap is memory + swap.
        swap = res.memory_swap
        writes.append(
            ("memory.swap.max", "max" if swap < 0 else str(swap - (res.memory_limit or 0)))
        )
    if res.memory_reservation is not None:
        writes.append(("memory.low", limit(res.memory_reservation)))
    if res.cpu_shares is not None:
        writes.append(("cpu.weight", str(cpu_weight(res.cpu_shares))))
    if res.cpu_quota is not None or res.cpu_period is not None:
        quota = str(res.cpu_quota) if res.cpu_quota and res.cpu_quota > 0 else "max"
        writes.append(("cpu.max", f"{quota} {res.cpu_period}" if res.cpu_period else quota))
    if res.pids_limit is not None:
        writes.append(("pids.max", limit(res.pids_limit)))
    for name, value in writes:
        _write(os.path.join(leaf, name), value)
