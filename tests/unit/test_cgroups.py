"""shim/cgroups/: path rules and parsing (pure), the v2 file work on a fake cgroup2 tree, then
the real cgroup filesystems (root).

On a hybrid host (v1, plus a v2 ``unified`` mount without controllers) the real kernel checks
every operation on v1 and the controller-free ones (create, join, members, cpu.stat, freeze,
kill, remove) on v2; v2's memory, cpu and pids files are only reached through the fake tree.
On a pure-v2 host the real-kernel tests cover v2 in full.

The root tests work under a unique top-level cgroup per test in every hierarchy, and the fixture
removes it (killing any stray child first) even when the test fails. Test children are forked
from pytest and join by writing "0" into join_files(), as container processes do; they report
each step through a pipe, so no test waits on a clock.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2

import shim.cgroups.cgroup as cgroup_module
import shim.cgroups.limits as limits_module
from shim import errors
from shim.cgroups import (
    Cgroup,
    Layout,
    Resources,
    Version,
    cgroupfs_path,
    cpu_weight,
    detect_layout,
    expand_slice,
    systemd_path,
    unapplied_changes,
)
from shim.proc.child import join_cgroup
from tests.prereq import needs, require

MiB = 1 << 20
UINT64_MAX = 2**64 - 1  # what containerd's cgroups v2 reports for a "max" limit
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_HANG_GUARD_SECONDS = 60.0


# ---- pure: paths, resources, layout detection ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/default/web", "/default/web"),
        ("default/web", "/default/web"),
        ("//a/./b/", "/a/b"),
        ("system.slice:containerd:abc", "/system.slice/containerd-abc.scope"),
        (":cri-containerd:abc", "/system.slice/cri-containerd-abc.scope"),
        (
            "kubepods-burstable-pod12.slice:cri-containerd:c0",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice"
            "/cri-containerd-c0.scope",
        ),
        ("-.slice:p:n", "/p-n.scope"),
        ("user.slice::n", "/user.slice/n.scope"),
        ("machine.slice:x:inner.slice", "/machine.slice/inner.slice"),
    ],
)
def test_cgroupfs_path(spec: str, expected: str) -> None:
    assert cgroupfs_path(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "/",
        "///",
        "/a/../b",
        "..",
        "a/\0/b",
        "a:b",
        "a:b:c:d",
        "system.slice:p:",
        "system:p:n",
        "a--b.slice:p:n",
        "-a.slice:p:n",
        "a-.slice:p:n",
        ".slice:p:n",
        "system.slice:p/q:n",
        "system.slice:p:..",
    ],
)
def test_malformed_paths_are_invalid_argument(spec: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        cgroupfs_path(spec)


def test_expand_slice_and_systemd_path() -> None:
    assert expand_slice("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert expand_slice("-.slice") == "/"
    assert systemd_path("", "", "x") == "/system.slice/x.scope"


def test_resources_from_spec() -> None:
    res = Resources.from_spec(
        {
            "memory": {"limit": 64 * MiB, "swap": 128 * MiB, "reservation": 0},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1"},
            "pids": {"limit": 20},
            "devices": [{"allow": False, "access": "rwm"}],
        }
    )
    assert res == Resources(
        memory_limit=64 * MiB,
        memory_swap=128 * MiB,
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        pids_limit=20,
    )
    assert Resources.from_spec(None) == Resources()


@pytest.mark.parametrize(
    "resources",
    [
        {"memory": {"limit": "64m"}},
        {"memory": {"limit": True}},
        {"memory": []},
        {"memory": {"swap": 10}},  # swap without a memory limit
        {"memory": {"limit": 100, "swap": 50}},  # swap (memory + swap) below the limit
    ],
)
def test_resources_rejects_bad_values(resources: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidArgument):
        Resources.from_spec(resources)


def test_unapplied_changes_names_only_real_changes_outside_memory_cpu_pids() -> None:
    current = {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 64 * MiB, "swappiness": 0},
        "cpu": {"shares": 2, "cpus": ""},
    }
    # CRI resends the whole section: equal entries, and empty or null ones, change nothing.
    same = {**current, "memory": {"limit": 128 * MiB, "swappiness": 0}, "blockIO": None}
    assert unapplied_changes(current, same) == []
    assert unapplied_changes(current, {"cpu": {"quota": 5000, "cpus": ""}, "pids": {}}) == []
    changed = {
        "cpu": {"cpus": "0-1", "shares": 4},
        "memory": {"kernel": 1},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "devices": [],
    }
    assert unapplied_changes(current, changed) == ["cpu.cpus", "memory.kernel", "hugepageLimits"]


def test_cpu_weight_matches_runc_mapping() -> None:
    assert [cpu_weight(s) for s in (2, 1024, 262144, 1, 10**9)] == [1, 39, 10000, 1, 10000]


def _mountinfo(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_detect_layout_hybrid_v1(tmp_path: Path) -> None:
    info = _mountinfo(
        tmp_path,
        [
            "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755",
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
            "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
            "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd",
            "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",
            "50 23 0:40 / /mnt/other\\040dir rw - cgroup cgroup rw,pids",
        ],
    )
    layout = detect_layout(info)
    assert layout.version is Version.V1
    assert dict(layout.mounts) == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/sys/fs/cgroup/memory",
    }
    # co-mounted controllers share one leaf, so one join file
    cg = Cgroup(layout, "/a")
    assert cg.join_files() == (
        "/sys/fs/cgroup/cpu,cpuacct/a/cgroup.procs",
        "/sys/fs/cgroup/memory/a/cgroup.procs",
    )


def test_detect_layout_pure_v2(tmp_path: Path) -> None:
    info = _mountinfo(tmp_path, ["29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate"])
    assert detect_layout(info) == Layout(Version.V2, {"": "/sys/fs/cgroup"})
    with pytest.raises(errors.FailedPrecondition):
        detect_layout(_mountinfo(tmp_path, ["1 0 0:1 / / rw - ext4 /dev/sda rw"]))


def test_v2_metrics_from_files(tmp_path: Path) -> None:
    """The v2 parsing, on files laid out as the kernel writes them (this host may lack them)."""
    leaf = tmp_path / "c"
    leaf.mkdir()
    files = {
        "pids.current": "3\n",
        "pids.max": "max\n",
        "cpu.stat": "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_periods 4\n"
        "nr_throttled 1\nthrottled_usec 70\ncore_sched.force_idle_usec 0\n",
        "memory.stat": "anon 4096\nfile 8192\nworkingset_refault_anon 2\n"
        "workingset_refault_file 3\npgfault 11\nnew_kernel_key 5\n",
        "memory.current": "12288\n",
        "memory.max": "max\n",
        "memory.swap.current": "0\n",
        "memory.swap.max": "1048576\n",
        "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        "io.stat": "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
    }
    for name, text in files.items():
        (leaf / name).write_text(text)
    cg = Cgroup(Layout(Version.V2, {"": str(tmp_path)}), "/c")
    m = cg.metrics()
    assert m.DESCRIPTOR.full_name == "io.containerd.cgroups.v2.Metrics"
    assert (m.pids.current, m.pids.limit) == (3, UINT64_MAX)
    assert (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec) == (900, 600, 300)
    assert (m.cpu.nr_periods, m.cpu.nr_throttled, m.cpu.throttled_usec) == (4, 1, 70)
    assert (m.memory.anon, m.memory.file, m.memory.pgfault) == (4096, 8192, 11)
    assert m.memory.workingset_refault == 5
    assert (m.memory.usage, m.memory.usage_limit) == (12288, UINT64_MAX)
    assert (m.memory.swap_usage, m.memory.swap_limit) == (0, 1048576)
    assert (m.memory_events.max, m.memory_events.oom, m.memory_events.oom_kill) == (7, 2, 1)
    assert [(e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios) for e in m.io.usage] == [
        (8, 0, 10, 20, 1, 2)
    ]
    assert cg.oom_killed_count() == 1


def test_v1_metrics_from_files(tmp_path: Path) -> None:
    mounts = {}
    for ctl, files in {
        "pids": {"pids.current": "2\n", "pids.max": "max\n"},
        "cpuacct": {
            "cpuacct.usage": "5000\n",
            "cpuacct.usage_percpu": "3000 2000 \n",
            "cpuacct.stat": "user 3\nsystem 1\n",
        },
        "cpu": {"cpu.stat": "nr_periods 9\nnr_throttled 4\nthrottled_time 123\n"},
        "memory": {
            "memory.stat": "cache 10\nrss 20\npgpgin 30\ntotal_pgmajfault 40\n"
            "hierarchical_memsw_limit 50\n",
            "memory.usage_in_bytes": "4096\n",
            "memory.limit_in_bytes": "8192\n",
            "memory.max_usage_in_bytes": "6000\n",
            "memory.failcnt": "3\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 1\noom_kill 2\n",
        },
        "blkio": {"blkio.throttle.io_service_bytes_recursive": "7:1 Read 512\nTotal 512\n"},
    }.items():
        (tmp_path / ctl / "c").mkdir(parents=True)
        for name, text in files.items():
            (tmp_path / ctl / "c" / name).write_text(text)
        mounts[ctl] = str(tmp_path / ctl)
    cg = Cgroup(Layout(Version.V1, mounts), "/c")
    m = cg.metrics()
    assert m.DESCRIPTOR.full_name == "io.containerd.cgroups.v1.Metrics"
    assert (m.pids.current, m.pids.limit) == (2, 0)
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    usage = m.cpu.usage
    assert (usage.total, list(usage.per_cpu)) == (5000, [3000, 2000])
    assert (usage.user, usage.kernel) == (3 * tick, 1 * tick)
    thr = m.cpu.throttling
    assert (thr.periods, thr.throttled_periods, thr.throttled_time) == (9, 4, 123)
    mem = m.memory
    assert (mem.cache, mem.rss, mem.pg_pg_in, mem.total_pg_maj_fault) == (10, 20, 30, 40)
    assert mem.hierarchical_swap_limit == 50
    entry = mem.usage
    assert (entry.usage, entry.limit, entry.max, entry.failcnt) == (4096, 8192, 6000, 3)
    assert not mem.HasField("swap")  # no memsw files: left unset, not zero-filled
    assert (m.memory_oom_control.under_oom, m.memory_oom_control.oom_kill) == (1, 2)
    [io] = m.blkio.io_service_bytes_recursive
    assert (io.op, io.major, io.minor, io.value) == ("Read", 7, 1, 512)
    assert cg.oom_killed_count() == 2


def test_metrics_of_a_missing_cgroup_is_not_found(tmp_path: Path) -> None:
    cg = Cgroup(Layout(Version.V2, {"": str(tmp_path)}), "/gone")
    with pytest.raises(errors.NotFound):
        cg.metrics()
    with pytest.raises(errors.NotFound):
        cg.pids()
    cg.remove()  # nothing owned, nothing there: a no-op
    assert Cgroup.load("/gone", owned=True, layout=cg.layout) is None


# ---- cgroup v2 on a fake tree: the code's v2 file work, run where the kernel lacks it -----
#
# The hosts this suite runs on are cgroup v1 with a hybrid v2 "unified" mount that has no
# controllers, so the real-kernel tests below cannot reach v2's memory, cpu and pids files. The
# code only reads and writes files, so here it runs unchanged against a directory laid out as a
# cgroup2 mount; FakeCgroup2 plays the kernel's part where a plain directory behaves otherwise:
# a mkdir fills the new cgroup with its interface files, a write replaces a file's value, and
# cgroup.subtree_control takes "+name"/"-name" requests.

_KERNEL_ORDER = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
_V2_DEFAULTS = {  # the interface files a new cgroup gets per enabled controller, as the kernel
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "io": {"io.stat": ""},
    "memory": {
        "memory.current": "0\n",
        "memory.max": "max\n",
        "memory.low": "0\n",
        "memory.swap.current": "0\n",
        "memory.swap.max": "max\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        "memory.stat": "anon 0\nfile 0\n",
    },
    "pids": {"pids.current": "0\n", "pids.max": "max\n"},
}


class FakeCgroup2:
    """A cgroup2 mount as plain files, with the kernel's side of mkdir and of writes.

    Installed by wrapping the file helpers the cgroup modules import (``_os_call`` for mkdir,
    ``_write`` in ``cgroup`` and ``limits``): the code's own call still runs first, against the
    files, and fails as it would on a kernel that lacks the file; the wrapper then does what
    the kernel would add (populate the new cgroup; keep only the value just written; apply a
    subtree_control request). All reads are the code's own, unwrapped.
    """

    def __init__(self, root: Path, controllers: str, enabled: str = "") -> None:
        self.root = root
        root.mkdir(exist_ok=True)
        (root / "cgroup.controllers").write_text(controllers + "\n")
        (root / "cgroup.subtree_control").write_text(enabled + "\n")
        (root / "cgroup.procs").write_text("")
        self.layout = Layout(Version.V2, {"": str(root)})

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_os_call, real_write = cgroup_module._os_call, cgroup_module._write
        assert limits_module._write is real_write  # one helper, wrapped the same everywhere

        def os_call(fn: Callable[..., object], path: str, **kwargs: Any) -> None:
            real_os_call(fn, path, **kwargs)
            if fn is os.mkdir:
                self._populate(Path(path))

        def write(path: str, value: str) -> None:
            before = Path(path).read_text() if os.path.exists(path) else ""
            real_write(path, value)
            if os.path.basename(path) == "cgroup.subtree_control":
                self._subtree_control(Path(path), before, value)
            elif os.path.basename(path) == "cgroup.freeze":  # no members: settles at once
                os.truncate(path, len(value.encode()))
                Path(path).with_name("cgroup.events").write_text(f"populated 0\nfrozen {value}\n")
            else:  # a cgroup file holds the value last written, not the rest of the old one
                os.truncate(path, len(value.encode()))

        monkeypatch.setattr(cgroup_module, "_os_call", os_call)
        monkeypatch.setattr(cgroup_module, "_write", write)
        monkeypatch.setattr(limits_module, "_write", write)

    @staticmethod
    def _subtree_control(path: Path, before: str, request: str) -> None:
        available = set((path.parent / "cgroup.controllers").read_text().split())
        enabled = set(before.split())
        for token in request.split():
            op, name = token[0], token[1:]
            assert op in "+-" and name in available, f"the kernel refuses {token!r} in {path}"
            (enabled.add if op == "+" else enabled.discard)(name)
        path.write_text(" ".join(c for c in _KERNEL_ORDER if c in enabled) + "\n")

    def _populate(self, new: Path) -> None:
        """What the kernel puts in a new cgroup: what its parent enables, and those files."""
        enabled = (new.parent / "cgroup.subtree_control").read_text().split()
        files = {
            "cgroup.controllers": " ".join(enabled) + "\n",
            "cgroup.subtree_control": "\n",
            "cgroup.procs": "",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "cgroup.freeze": "0\n",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        for controller in enabled:
            files.update(_V2_DEFAULTS.get(controller, {}))
        for name, text in files.items():
            (new / name).write_text(text)


@pytest.fixture
def fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCgroup2:
    """A fake cgroup2 root offering what a pure-v2 host's root does; cpu already enabled."""
    fake = FakeCgroup2(tmp_path / "cgroup2", "cpuset cpu io memory hugetlb pids", enabled="cpu")
    fake.install(monkeypatch)
    return fake


def _text(path: Path) -> str:
    return path.read_text().strip()


def test_v2_create_enables_controllers_down_the_path_and_writes_limits(
    fake_v2: FakeCgroup2,
) -> None:
    """v2 limits on a fake tree: which files ``Cgroup.create`` writes, with which values.

    Covered here, not by this host's kernel (its v2 mount has no controllers): enabling
    cpu/memory/pids/io in cgroup.subtree_control of every ancestor (and nothing the parent
    lacks: hugetlb and cpuset stay off), and the values written into memory.max,
    memory.swap.max (OCI's swap is memory + swap, v2's is swap alone), memory.low, cpu.max,
    cpu.weight (runc's shares -> weight mapping) and pids.max, read back through Stats.
    Not covered: the kernel accepting those values and enforcing them; the real-kernel
    tests below do that on v1 here, and on v2 only on a pure-v2 host.
    """
    resources = {
        "memory": {"limit": 64 * MiB, "swap": 96 * MiB, "reservation": 16 * MiB},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "pids": {"limit": 20},
    }
    cg = Cgroup.create("/pod/c", resources, layout=fake_v2.layout)
    root = fake_v2.root
    leaf = root / "pod" / "c"
    assert cg.owned == frozenset({str(leaf)})  # the parent it had to make is not its own
    assert _text(root / "cgroup.subtree_control") == "cpu io memory pids"
    assert _text(root / "pod" / "cgroup.subtree_control") == "cpu io memory pids"
    assert int(_text(leaf / "memory.max")) == 64 * MiB
    assert int(_text(leaf / "memory.swap.max")) == 32 * MiB
    assert int(_text(leaf / "memory.low")) == 16 * MiB
    assert _text(leaf / "cpu.max") == "50000 100000"
    assert _text(leaf / "cpu.weight") == "20"  # runc: 1 + (512 - 2) * 9999 // 262142
    assert _text(leaf / "pids.max") == "20"
    assert cg.join_files() == (str(leaf / "cgroup.procs"),)
    assert cg.memory_usage_file() == str(leaf / "memory.current")
    m = cg.metrics()
    assert (m.memory.usage_limit, m.memory.swap_limit) == (64 * MiB, 32 * MiB)
    assert m.pids.limit == 20


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ({"limit": 32 * MiB, "swap": 32 * MiB}, (str(32 * MiB), "0")),  # no swap at all
        ({"limit": 32 * MiB, "swap": -1}, (str(32 * MiB), "max")),  # unlimited swap
        ({"limit": -1}, ("max", "max")),  # unlimited memory, swap left as the kernel set it
    ],
)
def test_v2_memory_limit_values(
    fake_v2: FakeCgroup2, memory: dict[str, int], expected: tuple[str, str]
) -> None:
    """The v2 values of OCI's memory limit and memory + swap (-1 is "max")."""
    cg = Cgroup.create("/c", {"memory": memory}, layout=fake_v2.layout)
    leaf = Path(next(iter(cg.owned)))
    assert (_text(leaf / "memory.max"), _text(leaf / "memory.swap.max")) == expected


def test_v2_oom_kills_are_read_from_memory_events(fake_v2: FakeCgroup2) -> None:
    """``oom_killed_count`` on v2 reads memory.events' oom_kill (the kernel's count is faked:
    an actual OOM kill under memory.max is only seen on v1 on this host, or on a v2 host)."""
    cg = Cgroup.create("/c", {"memory": {"limit": 32 * MiB}}, layout=fake_v2.layout)
    assert cg.oom_killed_count() == 0
    events = fake_v2.root / "c" / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 9\noom 3\noom_kill 2\noom_group_kill 0\n")
    assert cg.oom_killed_count() == 2


def test_v2_an_existing_leaf_is_refused_and_nothing_is_written(fake_v2: FakeCgroup2) -> None:
    """A cgroupsPath whose directory exists (a host cgroup, or another container's) is
    refused before any file is written: not even the parent's subtree_control changes."""
    root = fake_v2.root
    (root / "host").mkdir()
    (root / "host" / "cgroup.procs").write_text("4242\n")
    before = _text(root / "cgroup.subtree_control")
    with pytest.raises(errors.FailedPrecondition, match=r"exists already \(processes in it: 1\)"):
        Cgroup.create("/host", {"pids": {"limit": 5}}, layout=fake_v2.layout)
    assert _text(root / "cgroup.subtree_control") == before
    assert sorted(p.name for p in (root / "host").iterdir()) == ["cgroup.procs"]
    with pytest.raises(errors.FailedPrecondition, match="cgroupsPath of its own"):
        Cgroup.require_absent("/host", layout=fake_v2.layout)
    Cgroup.require_absent("/other", layout=fake_v2.layout)  # absent: fine, nothing made
    assert not (root / "other").exists()


def test_v2_the_same_path_twice_is_refused_the_second_time(fake_v2: FakeCgroup2) -> None:
    first = Cgroup.create("/pod/c", None, layout=fake_v2.layout)
    with pytest.raises(errors.FailedPrecondition, match="/pod/c"):
        Cgroup.create("/pod/c", None, layout=fake_v2.layout)
    assert first.owned == frozenset({str(fake_v2.root / "pod" / "c")})
    assert (fake_v2.root / "pod" / "c" / "cgroup.procs").exists()  # the first's, untouched


def test_v2_a_leaf_taken_between_the_check_and_the_mkdir_is_refused(
    fake_v2: FakeCgroup2, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mkdir is the claim: if another creator wins after the existence check, Create is
    refused (it does not share the winner's cgroup) and removes nothing of the winner's."""
    real = cgroup_module._os_call

    def racing(fn: Callable[..., object], path: str, **kwargs: Any) -> None:
        if path == str(fake_v2.root / "c") and not os.path.exists(path):
            real(fn, path, **kwargs)  # the other creator's mkdir, just before ours
        real(fn, path, **kwargs)

    monkeypatch.setattr(cgroup_module, "_os_call", racing)
    with pytest.raises(errors.FailedPrecondition, match="exists already"):
        Cgroup.create("/c", None, layout=fake_v2.layout)
    assert (fake_v2.root / "c").is_dir()


def test_v2_kill_all_takes_no_subtree_it_did_not_make(fake_v2: FakeCgroup2) -> None:
    """cgroup.kill would kill a nested cgroup's processes too (another container's, say):
    with a cgroup below the leaf, only the leaf's own members are signalled."""
    cg = Cgroup.create("/c", None, layout=fake_v2.layout)
    leaf = fake_v2.root / "c"
    (leaf / "cgroup.kill").write_text("")
    cg.kill_all(signal.SIGKILL)
    assert _text(leaf / "cgroup.kill") == "1"  # no cgroup below: the kernel's subtree kill
    (leaf / "cgroup.kill").write_text("")
    (leaf / "nested").mkdir()
    cg.kill_all(signal.SIGKILL)  # no members of its own in the fake: nobody is signalled
    assert _text(leaf / "cgroup.kill") == ""
    assert _text(leaf / "cgroup.freeze") == "0"  # frozen for the sweep, thawed after


def test_a_cgroup_loaded_without_ownership_is_never_signalled_or_removed(
    fake_v2: FakeCgroup2,
) -> None:
    Cgroup.create("/native", None, layout=fake_v2.layout)  # as runc would have made it
    seen = Cgroup.load("/native", owned=False, layout=fake_v2.layout)
    assert seen is not None and seen.owned == frozenset()
    with pytest.raises(errors.FailedPrecondition, match="not created by the shim"):
        seen.kill_all(signal.SIGKILL)
    seen.remove()
    assert (fake_v2.root / "native").is_dir()
    assert seen.pids() == []  # still readable


def test_v2_cgroup_without_the_memory_controller_has_no_usage_file(tmp_path: Path) -> None:
    fake = FakeCgroup2(tmp_path / "cgroup2", "cpu pids")
    with pytest.MonkeyPatch.context() as mp:
        fake.install(mp)
        cg = Cgroup.create("/c", None, layout=fake.layout)
    assert cg.memory_usage_file() is None
    assert cg.oom_killed_count() == 0


# ---- root: the machine's real cgroup filesystems ------------------------------------------

root = pytest.mark.root
needs_root = needs(os.geteuid() == 0, "needs root to create cgroups")


def _layouts() -> list[Layout]:
    """The host's own layout; on a hybrid host also its v2 ``unified`` mount (few controllers)."""
    try:
        main = detect_layout()
    except errors.FailedPrecondition:
        return []
    found = [main]
    unified = "/sys/fs/cgroup/unified"
    if main.version is Version.V1 and os.path.exists(os.path.join(unified, "cgroup.procs")):
        found.append(Layout(Version.V2, {"": unified}))
    return found


def _has_memory(layout: Layout) -> bool:
    if layout.version is Version.V1:
        return "memory" in layout.mounts
    with open(os.path.join(layout.mounts[""], "cgroup.controllers")) as f:
        return "memory" in f.read().split()


def _layout_id(layout: Layout | None) -> str:
    return "none" if layout is None else f"{layout.version.value}:{min(layout.mounts.values())}"


class Env:
    """One test's scratch area: a unique top cgroup, and the children forked into it."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.base = f"/shim-wasmtime-test-{uuid.uuid4().hex[:12]}"
        self.children: list[int] = []

    def path(self, name: str = "c") -> str:
        return f"{self.base}/{name}"

    def dirs(self, name: str = "c") -> list[str]:
        return sorted({mount + self.path(name) for mount in self.layout.mounts.values()})

    def fork(
        self,
        cg: Cgroup,
        then: Callable[[int], None],
        join: Callable[[str], None] | None = None,
        threads: int = 0,
    ) -> int:
        """Fork a child that starts ``threads`` idle threads, joins ``cg`` by file writes
        alone (``join`` per join file: by default "0" into it), writes one byte, runs
        ``then``."""
        rfd, wfd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 0
            try:
                os.close(rfd)
                # Die with pytest: a spinning orphan must not outlive a crashed or killed run.
                _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != parent:
                    os._exit(112)
                for _ in range(threads):
                    threading.Thread(target=threading.Event().wait, daemon=True).start()
                for path in cg.join_files():
                    if join is not None:
                        join(path)
                        continue
                    fd = os.open(path, os.O_WRONLY)
                    os.write(fd, b"0")
                    os.close(fd)
                then(wfd)
            except BaseException:
                code = 111
            os._exit(code)
        os.close(wfd)
        self.children.append(pid)
        with os.fdopen(rfd, "rb") as ready:
            assert ready.read(1) == b"r", "child failed before joining"
        return pid

    def reap(self, pid: int) -> int:
        """The child's wait status. The deadline is only a guard against hanging the whole run
        when the code under test fails to kill; it asserts nothing about speed."""
        pidfd = os.pidfd_open(pid)
        try:
            exited = select.select([pidfd], [], [], _HANG_GUARD_SECONDS)[0]
        finally:
            os.close(pidfd)
        if not exited:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        self.children.remove(pid)
        if not exited:
            pytest.fail(f"child {pid} was still alive after {_HANG_GUARD_SECONDS}s")
        return status

    def cleanup(self) -> None:
        """Independent of the code under test: kill, reap, rmdir bottom-up in every hierarchy."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for mount in set(self.layout.mounts.values()):
            top = mount + self.base
            if not os.path.isdir(top):
                continue
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                for freeze in ("freezer.state", "cgroup.freeze"):
                    with contextlib.suppress(OSError):
                        Path(dirpath, freeze).write_text("THAWED" if freeze[0] == "f" else "0")
                with contextlib.suppress(OSError):
                    for pid in Path(dirpath, "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                for _ in range(500):
                    try:
                        os.rmdir(dirpath)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.01)


def _scratch(layout: Layout) -> Iterator[Env]:
    e = Env(layout)
    try:
        yield e
    finally:
        e.cleanup()
        leftovers = [m + e.base for m in e.layout.mounts.values() if os.path.exists(m + e.base)]
        assert not leftovers, f"test cgroups left behind: {leftovers}"


# A host with no cgroup filesystem (or no memory controller anywhere) gets one "none" case that
# skips, or fails under CI, instead of an empty parameter set that pytest would skip silently.
@pytest.fixture(params=_layouts() or [None], ids=_layout_id)
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """A scratch area in each cgroup hierarchy of this host (v1, and v2 ``unified`` if any)."""
    require(request.param is not None, "no cgroup filesystem is mounted")
    yield from _scratch(request.param)


@pytest.fixture(params=[lay for lay in _layouts() if _has_memory(lay)] or [None], ids=_layout_id)
def memory_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """A scratch area in each hierarchy that has the memory controller.

    On a hybrid host that is the v1 one only: its v2 ``unified`` mount has no controllers, and
    the v2 memory files are exercised on a fake tree instead (FakeCgroup2 above).
    """
    require(request.param is not None, "no cgroup hierarchy here has the memory controller")
    yield from _scratch(request.param)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _busy(wfd: int) -> None:
    """Use some CPU and touch 8 MiB inside the cgroup, report ready, then spin until killed."""
    sum(range(3_000_000))
    ballast = bytearray(8 * MiB)
    os.write(wfd, b"r")
    while ballast:
        pass


def _idle(wfd: int) -> None:
    os.write(wfd, b"r")
    while True:
        signal.pause()


def _allocate_forever(wfd: int) -> None:
    os.write(wfd, b"r")
    hoard = []
    for _ in range(256):  # 1 GiB in all, far past the test's limit
        hoard.append(bytearray(4 * MiB))
    os._exit(3)  # not OOM-killed: the test sees exit status 3


@root
@needs_root
def test_create_applies_limits(memory_env: Env) -> None:
    """The real kernel accepts the limits (on this host: v1; on a pure-v2 host: v2)."""
    env = memory_env
    resources = {
        "memory": {"limit": 64 * MiB},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "pids": {"limit": 20},
    }
    cg = Cgroup.create(env.path(), resources, layout=env.layout)
    assert cg.owned == frozenset(env.dirs())
    if env.layout.version is Version.V1:
        m = env.layout.mounts
        leaf = env.path()
        assert int(_read(m["memory"] + leaf + "/memory.limit_in_bytes")) == 64 * MiB
        assert _read(m["cpu"] + leaf + "/cpu.shares") == "512"
        assert _read(m["cpu"] + leaf + "/cpu.cfs_quota_us") == "50000"
        assert _read(m["cpu"] + leaf + "/cpu.cfs_period_us") == "100000"
        assert _read(m["pids"] + leaf + "/pids.max") == "20"
    else:
        [leaf] = env.dirs()
        assert int(_read(leaf + "/memory.max")) == 64 * MiB
        assert _read(leaf + "/cpu.max") == "50000 100000"
        assert _read(leaf + "/cpu.weight") == str(cpu_weight(512))
        assert _read(leaf + "/pids.max") == "20"


@root
@needs_root
def test_update_changes_the_limits_of_a_live_cgroup(memory_env: Env) -> None:
    """Update writes into the existing directories (a member present), and the kernel's
    refusal names the file."""
    env = memory_env
    cg = Cgroup.create(env.path(), {"memory": {"limit": 64 * MiB}}, layout=env.layout)
    env.fork(cg, _idle)
    cg.update(Resources.from_spec({"memory": {"limit": 96 * MiB}, "pids": {"limit": 7}}))
    if env.layout.version is Version.V1:
        m, leaf = env.layout.mounts, env.path()
        assert int(_read(m["memory"] + leaf + "/memory.limit_in_bytes")) == 96 * MiB
        assert _read(m["pids"] + leaf + "/pids.max") == "7"
        cg.update(Resources.from_spec({"memory": {"limit": -1}}))
        assert int(_read(m["memory"] + leaf + "/memory.limit_in_bytes")) > 2**60
    else:
        [leaf] = env.dirs()
        assert int(_read(leaf + "/memory.max")) == 96 * MiB
        assert _read(leaf + "/pids.max") == "7"
    with pytest.raises(errors.InvalidArgument):
        cg.update(Resources.from_spec({"pids": {"limit": "many"}}))
    cg.kill_all(signal.SIGKILL)


@root
@needs_root
@pytest.mark.parametrize("threads", [0, 3])
def test_a_container_process_joins_whole_with_one_thread_or_many(env: Env, threads: int) -> None:
    """shim/proc/child.py's join: one thread takes v1's `tasks` shortcut, several the whole
    cgroup.procs; either way every thread of the process ends up in every hierarchy."""
    cg = Cgroup.create(env.path(), None, layout=env.layout)
    pid = env.fork(cg, _busy, join=join_cgroup, threads=threads)
    assert cg.pids() == [pid]
    members = "cgroup.threads" if env.layout.version is Version.V2 else "tasks"
    tids = sorted(os.listdir(f"/proc/{pid}/task"))
    assert len(tids) >= threads + 1  # (a library may start more at fork: see below)
    for leaf in cg._leaves():
        assert sorted(_read(os.path.join(leaf, members)).split()) == tids, leaf
    cg.kill_all(signal.SIGKILL)
    assert os.WTERMSIG(env.reap(pid)) == signal.SIGKILL


@root
@needs_root
def test_join_pids_and_metrics(env: Env) -> None:
    memory = _has_memory(env.layout)
    cg = Cgroup.create(env.path(), None, layout=env.layout)
    pid = env.fork(cg, _busy)
    assert cg.pids() == [pid]
    m = cg.metrics()
    if env.layout.version is Version.V1:
        assert m.cpu.usage.total > 0
        assert sum(m.cpu.usage.per_cpu) > 0
        assert m.memory.usage.usage > 0
        # pids.current counts tasks (threads): a library loaded earlier in this pytest process
        # (grpcio) may start threads in a forked child, so count the child's own tasks.
        assert m.pids.current == len(os.listdir(f"/proc/{pid}/task"))
    else:
        assert m.cpu.usage_usec > 0
        if memory:
            assert m.memory.usage > 0
            assert m.pids.current == len(os.listdir(f"/proc/{pid}/task"))
    packed = any_pb2.Any()
    packed.Pack(m)
    assert packed.type_url.endswith(
        "/io.containerd.cgroups." + env.layout.version.value + ".Metrics"
    )
    back = type(m)()
    assert packed.Unpack(back)
    assert back == m
    cg.kill_all(signal.SIGKILL)
    assert os.WTERMSIG(env.reap(pid)) == signal.SIGKILL


@root
@needs_root
def test_oom_kill_is_counted(memory_env: Env) -> None:
    """The real kernel OOM-kills past the limit and counts it (this host: v1; or pure v2)."""
    env = memory_env
    limit = 32 * MiB
    swap_file = env.layout.mounts.get("memory", "") + "/memory.memsw.limit_in_bytes"
    memory = {"limit": limit, "swap": limit} if os.path.exists(swap_file) else {"limit": limit}
    if env.layout.version is Version.V2:
        memory["swap"] = limit  # no swap at all for the child
    cg = Cgroup.create(env.path(), {"memory": memory}, layout=env.layout)
    assert cg.oom_killed_count() == 0
    pid = env.fork(cg, _allocate_forever)
    status = env.reap(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert cg.oom_killed_count() >= 1


@root
@needs_root
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_all(env: Env, sig: int) -> None:
    cg = Cgroup.create(env.path(), None, layout=env.layout)
    pids = [env.fork(cg, _idle), env.fork(cg, _idle)]
    assert cg.pids() == sorted(pids)
    cg.kill_all(sig)
    for pid in pids:
        assert os.WTERMSIG(env.reap(pid)) == sig
    assert not cg.frozen()


@root
@needs_root
def test_freeze_and_thaw(env: Env) -> None:
    cg = Cgroup.create(env.path(), None, layout=env.layout)
    pid = env.fork(cg, _idle)
    cg.freeze()
    assert cg.frozen()
    cg.kill_all(signal.SIGTERM)  # a paused container stays paused
    if env.layout.version is Version.V1:
        assert cg.frozen()  # v1: the signal waits for the thaw
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    else:  # v2 delivers fatal signals to frozen tasks; the freeze request stays
        assert _read(env.dirs()[0] + "/cgroup.freeze") == "1"
    cg.thaw()
    assert not cg.frozen()
    assert os.WTERMSIG(env.reap(pid)) == signal.SIGTERM


@root
@needs_root
def test_remove_leaves_nothing_and_keeps_parents(env: Env) -> None:
    cg = Cgroup.create(env.path(), None, layout=env.layout)
    pid = env.fork(cg, _idle)
    os.kill(pid, signal.SIGKILL)
    env.reap(pid)
    # a sub-cgroup made inside the container's cgroup goes too
    os.mkdir(env.dirs()[0] + "/nested")
    cg.remove()
    assert not [d for d in env.dirs() if os.path.exists(d)]
    assert all(os.path.isdir(m + env.base) for m in env.layout.mounts.values())
    cg.remove()  # idempotent
    assert Cgroup.load(env.path(), owned=True, layout=env.layout) is None
    with pytest.raises(errors.NotFound):
        cg.metrics()


@root
@needs_root
def test_load_finds_an_existing_cgroup(env: Env) -> None:
    Cgroup.create(env.path(), None, layout=env.layout)
    loaded = Cgroup.load(env.path(), owned=True, layout=env.layout)
    assert loaded is not None
    assert loaded.path == env.path()
    assert loaded.owned == frozenset(env.dirs())
    pid = env.fork(loaded, _idle)
    assert loaded.pids() == [pid]
    loaded.kill_all(signal.SIGKILL)
    env.reap(pid)
    loaded.remove()
    assert not [d for d in env.dirs() if os.path.exists(d)]


@root
@needs_root
def test_a_cgroup_that_existed_before_is_refused_and_its_process_left_alone(env: Env) -> None:
    """A host cgroup named as a container's cgroupsPath, with an unrelated process in it:
    Create is refused, nothing is written into it, and the process and the cgroup stay."""
    for d in env.dirs():
        os.makedirs(d)
    host = Cgroup.load(env.path(), owned=False, layout=env.layout)
    assert host is not None
    pid = env.fork(host, _idle)
    limits = {"pids": {"limit": 7}} if "pids" in env.layout.mounts else None
    with pytest.raises(errors.FailedPrecondition, match=r"processes in it: 1\)"):
        Cgroup.create(env.path(), limits, layout=env.layout)
    assert all(os.path.isdir(d) for d in env.dirs())
    assert host.pids() == [pid] and os.waitpid(pid, os.WNOHANG) == (0, 0)
    if limits:
        assert _read(env.layout.mounts["pids"] + env.path() + "/pids.max") == "max"
    os.kill(pid, signal.SIGKILL)
    env.reap(pid)


@root
@needs_root
def test_a_second_container_on_the_same_path_is_refused(env: Env) -> None:
    first = Cgroup.create(env.path(), None, layout=env.layout)
    pid = env.fork(first, _idle)
    with pytest.raises(errors.FailedPrecondition, match=env.path()):
        Cgroup.create(env.path(), None, layout=env.layout)
    assert first.pids() == [pid]  # the first container's process and cgroup are untouched
    first.kill_all(signal.SIGKILL)
    env.reap(pid)
    first.remove()
    assert not [d for d in env.dirs() if os.path.exists(d)]


@root
@needs_root
def test_kernel_refusal_names_the_file_and_undoes_create(env: Env) -> None:
    # A 1 us quota is below the kernel's minimum (or, without a cpu controller, cpu.max is
    # missing): either way the write fails and the error says which file.
    with pytest.raises(errors.Internal, match=r"cpu\.(cfs_quota_us|max)"):
        Cgroup.create(env.path(), {"cpu": {"quota": 1, "period": 100000}}, layout=env.layout)
    assert not [d for d in env.dirs() if os.path.exists(d)]
