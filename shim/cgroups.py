"""Per-container cgroups on cgroup v1 (one hierarchy per controller) and v2 (one unified tree).

The shim has no runc underneath, so it does runc's cgroup work itself: turn the spec's
``linux.cgroupsPath`` into one directory per hierarchy, write ``linux.resources`` into the kernel
files, let the container process join, read the files back as containerd's Metrics messages, and
remove exactly the directory it made. The systemd form of the path is converted to the cgroupfs
path systemd would use and created directly; systemd is never asked to make a scope, so it does
not know about (or manage) these cgroups. Every call is a plain file operation; the daemon runs
them off the event loop, and a forked child joins by writing into ``join_files()`` itself.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from shim.errors import FailedPrecondition, Internal, InvalidArgument, NotFound

CGROUP_ROOT = "/sys/fs/cgroup"
# v1 hierarchies a container lives in. cpuset is left out on purpose: a fresh cpuset cgroup has
# empty cpus/mems and refuses members until both are copied from the parent.
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer", "blkio")
V2_CONTROLLERS = ("cpu", "memory", "pids", "io")
UINT64_MAX = 2**64 - 1
_SETTLE_SECONDS = 5.0  # how long freeze and rmdir wait for the kernel / exiting processes


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


def cpu_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2, 262144] -> v2 cpu.weight [1, 10000], the mapping runc uses."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


@dataclass
class Cgroup:
    """One container's cgroup: a leaf directory per hierarchy (v1) or one directory (v2)."""

    layout: Layout
    path: str  # below each hierarchy root, e.g. "/default/web"
    owned: frozenset[str] = field(default_factory=frozenset)  # leaf dirs remove() may rmdir

    @classmethod
    def create(
        cls,
        cgroups_path: str,
        resources: Mapping[str, Any] | None,
        *,
        layout: Layout | None = None,
    ) -> Cgroup:
        """Make the directories and apply the limits. Raises InvalidArgument, Internal."""
        rel = cgroupfs_path(cgroups_path)
        res = Resources.from_spec(resources)
        cg = cls(layout or detect_layout(), rel)
        made: list[str] = []
        try:
            for leaf in cg._leaves():
                if not os.path.isdir(leaf):
                    cg._make(leaf)
                    made.append(leaf)
            cg.owned = frozenset(made)
            if cg.layout.version is Version.V2:
                _apply_v2(cg._leaves()[0], res)
            else:
                _apply_v1(cg._dirs(), res)
        except BaseException:
            for leaf in made:
                _rmdir_quiet(leaf)
            raise
        return cg

    @classmethod
    def load(cls, cgroups_path: str, *, layout: Layout | None = None) -> Cgroup | None:
        """The existing cgroup of a container (for cleanup in ``delete``), or None.

        The leaf is the container's own cgroup by construction of its path, so every existing
        leaf counts as owned; parents never do.
        """
        cg = cls(layout or detect_layout(), cgroupfs_path(cgroups_path))
        cg.owned = frozenset(d for d in cg._leaves() if os.path.isdir(d))
        return cg if cg.owned else None

    # ---- layout ------------------------------------------------------------------------------

    def _dirs(self) -> dict[str, str]:
        """controller -> leaf directory (v2: one entry with key "")."""
        return {c: mount + self.path for c, mount in self.layout.mounts.items()}

    def _leaves(self) -> list[str]:
        """Distinct leaf directories (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self._dirs().values()))

    def _make(self, leaf: str) -> None:
        if self.layout.version is Version.V1:
            _os_call(os.makedirs, leaf, exist_ok=True)
            return
        # v2: a controller reaches a cgroup only when every ancestor enables it for its children.
        mount = self.layout.mounts[""]
        current = mount
        for name in self.path.strip("/").split("/"):
            available = set(_read(os.path.join(current, "cgroup.controllers")).split())
            enabled = set(_read(os.path.join(current, "cgroup.subtree_control")).split())
            wanted = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
            if wanted:
                _write(
                    os.path.join(current, "cgroup.subtree_control"),
                    " ".join("+" + c for c in wanted),
                )
            current = os.path.join(current, name)
            if not os.path.isdir(current):
                _os_call(os.mkdir, current)

    def _existing(self) -> list[str]:
        leaves = [d for d in self._leaves() if os.path.isdir(d)]
        if not leaves:
            raise NotFound(f"cgroup {self.path} does not exist")
        return leaves

    # ---- processes ---------------------------------------------------------------------------

    def join_files(self) -> tuple[str, ...]:
        """The cgroup.procs files a process writes "0" (itself) or a pid into to join."""
        return tuple(os.path.join(d, "cgroup.procs") for d in self._leaves())

    def memory_usage_file(self) -> str | None:
        """The file holding the cgroup's current memory charge in bytes, if memory is managed.

        A container process reads it after its engine is ready, to leave the guest's linear
        memory only the room its cgroup limit has left (see shim/zygote.py)."""
        if self.layout.version is Version.V2:
            name = os.path.join(self.layout.mounts[""] + self.path, "memory.current")
        elif "memory" in self.layout.mounts:
            name = os.path.join(self.layout.mounts["memory"] + self.path, "memory.usage_in_bytes")
        else:
            return None
        return name if os.path.exists(name) else None

    def join(self, pid: int) -> None:
        for path in self.join_files():
            _write(path, str(pid))

    def pids(self) -> list[int]:
        """Members in any hierarchy (a process half-way through joining still counts)."""
        found: set[int] = set()
        for leaf in self._existing():
            text = _read(os.path.join(leaf, "cgroup.procs"), missing="")
            found.update(int(x) for x in text.split())
        return sorted(found)

    def kill_all(self, sig: int) -> None:
        """Signal every member; frozen meanwhile so a forking process cannot escape the sweep."""
        leaf = self._existing()[0]
        if self.layout.version is Version.V2 and sig == signal.SIGKILL:
            kill_file = os.path.join(leaf, "cgroup.kill")
            if os.path.exists(kill_file):
                _write(kill_file, "1")
                return
        # Freeze for the sweep unless already frozen (a paused container stays paused).
        sweep_frozen = self._freeze_file() is not None and not self.frozen()
        if sweep_frozen:
            self.freeze()
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        finally:
            if sweep_frozen:
                self.thaw()

    # ---- freezer -----------------------------------------------------------------------------

    def _freeze_file(self) -> str | None:
        if self.layout.version is Version.V2:
            path = os.path.join(self._leaves()[0], "cgroup.freeze")
        elif "freezer" in self.layout.mounts:
            path = os.path.join(self._dirs()["freezer"], "freezer.state")
        else:
            return None
        return path if os.path.exists(path) else None

    def frozen(self) -> bool:
        """Whether the kernel reports the cgroup frozen (False without a freezer)."""
        path = self._freeze_file()
        if path is None:
            return False
        if self.layout.version is Version.V2:
            events = _read(os.path.join(os.path.dirname(path), "cgroup.events"))
            return "frozen 1" in events.splitlines()
        return _read(path).strip() == "FROZEN"

    def freeze(self) -> None:
        self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def _set_frozen(self, frozen: bool) -> None:
        """Ask, then wait until the kernel reports the state (freezing is asynchronous)."""
        self._existing()
        path = self._freeze_file()
        if path is None:
            raise FailedPrecondition(f"cgroup {self.path} has no freezer")
        value = (
            ("1" if frozen else "0")
            if self.layout.version is Version.V2
            else ("FROZEN" if frozen else "THAWED")
        )
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:
            _write(path, value)  # v1 may stay FREEZING until asked again
            if self.frozen() == frozen:
                return
            if time.monotonic() > deadline:
                raise Internal(f"cgroup {self.path}: {path} did not reach {value!r}")
            time.sleep(0.01)

    # ---- stats -------------------------------------------------------------------------------

    def metrics(self) -> Message:
        """io.containerd.cgroups.v1.Metrics or .v2.Metrics, from whatever files exist.

        Raises NotFound when the cgroup is gone (containerd skips such a task silently).
        """
        self._existing()
        if self.layout.version is Version.V2:
            return _metrics_v2(self._leaves()[0])
        return _metrics_v1(self._dirs())

    def oom_killed_count(self) -> int:
        """How many processes the OOM killer took in this cgroup (0 without a memory controller)."""
        dirs = self._dirs()
        if self.layout.version is Version.V2:
            self._existing()
            text = _read(os.path.join(dirs[""], "memory.events"), missing="")
        elif "memory" in dirs:
            text = _read(os.path.join(dirs["memory"], "memory.oom_control"))
        else:
            return 0
        return _flat_keyed(text).get("oom_kill", 0)

    # ---- cleanup -----------------------------------------------------------------------------

    def remove(self) -> None:
        """rmdir the leaves this object owns (and any sub-cgroups inside them), never a parent.

        Retries while the kernel still counts exiting processes; idempotent. Raises Internal
        naming the directory if it stays busy.
        """
        for leaf in sorted(self.owned):
            for sub in _subdirs_bottom_up(leaf):
                _rmdir_patiently(sub)


def _subdirs_bottom_up(leaf: str) -> Iterator[str]:
    for top, dirnames, _files in os.walk(leaf, topdown=False):
        for name in dirnames:
            yield os.path.join(top, name)
    yield leaf


def _rmdir_patiently(path: str) -> None:
    deadline = time.monotonic() + _SETTLE_SECONDS
    delay = 0.005
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise Internal(f"cannot remove cgroup {path}: {e.strerror}") from e
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _rmdir_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


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
        for path, value in writes:
            _write(path, str(value))
    if "cpu" in dirs:
        cpu = dirs["cpu"]
        for name, value in (
            ("cpu.shares", res.cpu_shares),
            ("cpu.cfs_period_us", res.cpu_period),
            ("cpu.cfs_quota_us", res.cpu_quota),
        ):
            if value is not None:
                _write(os.path.join(cpu, name), str(value))
    if "pids" in dirs and res.pids_limit is not None:
        value = str(res.pids_limit) if res.pids_limit > 0 else "max"
        _write(os.path.join(dirs["pids"], "pids.max"), value)


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


# ---- metrics ----------------------------------------------------------------------------------

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


def _metrics_v1(dirs: Mapping[str, str]) -> Message:
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
            total, base = key.startswith("total_"), key.removeprefix("total_")
            name = ("total_" if total else "") + _V1_MEMORY_RENAMES.get(base, base)
            _set_uint(mem, name, value)
        for entry, prefix in (
            (mem.usage, "memory"),
            (mem.swap, "memory.memsw"),
            (mem.kernel, "memory.kmem"),
            (mem.kernel_tcp, "memory.kmem.tcp"),
        ):
            if (usage := _opt(d, prefix + ".usage_in_bytes")) is not None:
                entry.usage = _uint(usage)
                entry.limit = _uint(_opt(d, prefix + ".limit_in_bytes") or "0")
                entry.max = _uint(_opt(d, prefix + ".max_usage_in_bytes") or "0")
                entry.failcnt = _uint(_opt(d, prefix + ".failcnt") or "0")
        if (oom := _opt(d, "memory.oom_control")) is not None:
            for key, value in _flat_keyed(oom).items():
                _set_uint(m.memory_oom_control, key, value)
    if d := dirs.get("blkio"):
        for name in _V1_BLKIO_FIELDS:
            # The non-throttle files are only filled by the CFQ/BFQ schedulers.
            text = _opt(d, "blkio." + name) or _opt(d, "blkio.throttle." + name) or ""
            for op, major, minor, value in _blkio_lines(text):
                getattr(m.blkio, name).add(
                    op=op, device=_device(major, minor), major=major, minor=minor, value=value
                )
    return m


def _metrics_v2(leaf: str) -> Message:
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
            if (value := _opt(leaf, file)) is not None:
                setattr(m.memory, name, _uint(value, UINT64_MAX))
    if (text := _opt(leaf, "memory.events")) is not None:
        for key, value in _flat_keyed(text).items():
            _set_uint(m.memory_events, key, value)
    for line in (_opt(leaf, "io.stat") or "").splitlines():
        device, *pairs = line.split()
        major, _, minor = device.partition(":")
        entry = m.io.usage.add(major=_uint(major), minor=_uint(minor))
        for pair in pairs:
            key, _, value = pair.partition("=")
            _set_uint(entry, key, _uint(value))
    return m


def _pids(msg: Message, leaf: str, unlimited: int) -> None:
    msg.current = _uint(_opt(leaf, "pids.current") or "0")  # type: ignore[attr-defined]
    msg.limit = _uint(_opt(leaf, "pids.max") or "max", unlimited)  # type: ignore[attr-defined]


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


def _opt(leaf: str, name: str) -> str | None:
    """A file's text, or None if this kernel / hierarchy does not provide it."""
    try:
        with open(os.path.join(leaf, name), encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV, errno.EOPNOTSUPP):
            return None
        raise Internal(f"cgroup: reading {os.path.join(leaf, name)}: {e.strerror}") from e


# ---- file helpers --------------------------------------------


def _write(path: str, value: str) -> None:
    """One write(2) per value, as the kernel expects; failures name the file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise Internal(f"cgroup: writing {value!r} to {path}: {e.strerror}") from e


def _read(path: str, missing: str | None = None) -> str:
    """The file's text; ``missing`` when it does not exist (None: raise Internal)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError as e:
        if missing is not None:
            return missing
        raise Internal(f"cgroup: reading {path}: {e.strerror}") from e
    except OSError as e:
        raise Internal(f"cgroup: reading {path}: {e.strerror}") from e


def _os_call(fn: Callable[..., object], path: str, **kwargs: Any) -> None:
    try:
        fn(path, **kwargs)
    except OSError as e:
        raise Internal(f"cgroup: creating {path}: {e.strerror}") from e


def _flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat, memory.events ...) -> dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out
