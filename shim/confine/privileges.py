"""Who the guest process is and what it may do: uid/gids, capabilities, no_new_privs, rlimits,
oom_score_adj, applied in the order the kernel needs them.

The container process starts as the daemon's root with every capability. In order:
rlimits and oom_score_adj (`apply_limits`, while /proc is the host's and the process is still
allowed to lower its own score), then in `drop`:
1. the bounding set loses every capability `process.capabilities.bounding` does not list;
2. with PR_SET_KEEPCAPS, the process changes to the spec's gids and uid (keeping its
   permitted set across a change from root, which would otherwise clear it);
3. capset(2) sets effective, permitted and inheritable exactly as the spec lists them, and
   the ambient set is cleared and raised to the spec's list;
4. no_new_privs when `process.noNewPrivileges`.
A spec without `process.capabilities` gets empty sets, as runc gives it.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shim import libc
from shim.errors import FailedPrecondition, InvalidArgument

# Capability numbers, from <linux/capability.h>.
CAPABILITIES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        (
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST",
            "CAP_NET_ADMIN",
            "CAP_NET_RAW",
            "CAP_IPC_LOCK",
            "CAP_IPC_OWNER",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE",
            "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT",
            "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_MKNOD",
            "CAP_LEASE",
            "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP",
            "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN",
            "CAP_SYSLOG",
            "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND",
            "CAP_AUDIT_READ",
            "CAP_PERFMON",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
        )
    )
}

# rlimit numbers, from <asm-generic/resource.h> (the resource module lacks some of them).
RLIMITS: dict[str, int] = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}
_RLIM_INFINITY = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The five sets of `process.capabilities`, as bit masks."""

    bounding: int = 0
    effective: int = 0
    permitted: int = 0
    inheritable: int = 0
    ambient: int = 0


@dataclass(frozen=True, slots=True)
class Privileges:
    """What `drop` makes of the process (plain values: they cross to the spawner as JSON)."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    capabilities: Capabilities = field(default_factory=Capabilities)
    no_new_privileges: bool = False
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (resource, soft, hard)
    oom_score_adj: int | None = None


def _mask(names: Any, what: str) -> int:
    if names is None:
        return 0
    if not isinstance(names, list):
        raise InvalidArgument(f"config.json: {what} must be a list")
    mask = 0
    for name in names:
        if name not in CAPABILITIES:
            raise InvalidArgument(f"config.json: {what}: unknown capability {name!r}")
        mask |= 1 << CAPABILITIES[name]
    return mask


def capabilities_from_spec(doc: Mapping[str, Any] | None) -> Capabilities:
    """`process.capabilities` as masks; unknown names are refused (a typo must not widen)."""
    doc = doc or {}
    return Capabilities(
        **{
            field: _mask(doc.get(field), f"process.capabilities.{field}")
            for field in ("bounding", "effective", "permitted", "inheritable", "ambient")
        }
    )


def rlimits_from_spec(items: Iterable[Any]) -> tuple[tuple[int, int, int], ...]:
    """`process.rlimits` as (resource, soft, hard); unknown types and soft > hard refused."""
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or item.get("type") not in RLIMITS:
            raise InvalidArgument(f"config.json: process.rlimits[{i}] has an unknown type")
        soft, hard = item.get("soft"), item.get("hard")
        if not isinstance(soft, int) or not isinstance(hard, int) or soft < 0 or hard < 0:
            raise InvalidArgument(f"config.json: process.rlimits[{i}]: soft/hard must be >= 0")
        if soft > hard:
            raise InvalidArgument(
                f"config.json: process.rlimits[{i}] ({item['type']}): soft {soft} > hard {hard}"
            )
        out.append((RLIMITS[item["type"]], min(soft, _RLIM_INFINITY), min(hard, _RLIM_INFINITY)))
    return tuple(out)


def apply_limits(p: Privileges) -> None:
    """rlimits and oom_score_adj; before the pivot (this writes the host's /proc/self)."""
    names = {number: name for name, number in RLIMITS.items()}
    for res, soft, hard in p.rlimits:
        try:
            resource.setrlimit(
                res,
                (
                    resource.RLIM_INFINITY if soft == _RLIM_INFINITY else soft,
                    resource.RLIM_INFINITY if hard == _RLIM_INFINITY else hard,
                ),
            )
        except (OSError, ValueError) as e:
            raise FailedPrecondition(
                f"process.rlimits {names.get(res, res)} soft {soft} hard {hard}: {e}"
            ) from None
    if p.oom_score_adj is not None:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(p.oom_score_adj))
        except OSError as e:
            raise FailedPrecondition(
                f"process.oomScoreAdj {p.oom_score_adj}: {e.strerror} (lowering it needs "
                "CAP_SYS_RESOURCE in the shim's bounding set)"
            ) from None


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


LAST_CAPABILITY = _last_capability()  # read at import, while /proc is the host's


def drop(p: Privileges) -> None:
    """Bounding set, ids, capability sets, ambient set, no_new_privs: in that order."""
    caps = p.capabilities
    for cap in range(LAST_CAPABILITY + 1):
        if not caps.bounding & (1 << cap):
            libc.prctl(libc.PR_CAPBSET_DROP, cap)
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    os.setgroups(list(p.additional_gids))
    os.setgid(p.gid)
    os.setuid(p.uid)
    libc.prctl(libc.PR_SET_KEEPCAPS, 0)
    libc.capset(caps.effective, caps.permitted, caps.inheritable)
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(LAST_CAPABILITY + 1):
        if caps.ambient & (1 << cap):
            libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, cap)
    if p.no_new_privileges:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
