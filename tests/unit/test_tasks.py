"""The task logic (shim/task/tasks.py) with fakes at its edges: the order of events, exits that
race Start, Kill of a process that never becomes ready, Kill and Delete of tasks that never ran,
OOM reporting, shutdown when idle, Pause/Resume/Update through the state table, and the wasm
supervisor's Pause, Kill and Update against a fake cgroup.

The supervisor (the process side) is a fake whose processes the test drives; the Container, its
state table and its stdio are real.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from runtimes.base import RunConfig
from shim.cgroups import Resources
from shim.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from shim.io.stdio import ProcessIO, StdioConfig
from shim.oci import spec
from shim.proc.process import Process
from shim.task.container import Container
from shim.task.execs import ExecProcess, parse_exec_spec
from shim.task.states import State
from shim.task.supervisor import WasmSupervisor
from shim.task.tasks import Tasks
from shim.task.workload import Workload


class FakeCgroup:
    def __init__(self, ooms: int = 0) -> None:
        self.ooms = ooms

    def oom_killed_count(self) -> int:
        return self.ooms


class FakeSupervisor:
    """Creates Processes the test resolves; records the signals sent to them."""

    kind = Workload.WASM

    def __init__(self, cgroup: FakeCgroup | None = None) -> None:
        self.cgroup = cgroup
        self.process: Process | None = None
        self.killed: list[int] = []
        self.may_start = asyncio.Event()
        self.may_start.set()
        self.kill_ends_it = False
        self.may_freeze = asyncio.Event()  # pause/resume wait for it
        self.may_freeze.set()
        self.freeze_error: Exception | None = None
        self.calls: list[str] = []
        self.updates: list[tuple[dict[str, object], bool]] = []
        self.exec_processes: list[Process] = []
        self.exec_setups: list[object] = []
        self.killed_pids: list[int] = []

    def held(self) -> dict[str, str]:
        return {}

    async def start(self, stdio: tuple[int, int, int], console: object) -> Process:
        await self.may_start.wait()
        self.process = Process(pid=1000 + len(self.killed))
        return self.process

    async def start_exec(
        self, e: object, setup: object, stdio: tuple[int, int, int], console: object
    ) -> Process:
        self.exec_setups.append(setup)
        self.exec_processes.append(Process(pid=2000 + len(self.exec_processes)))
        return self.exec_processes[-1]

    async def kill(self, process: Process, sig: int, all_: bool) -> None:
        self.killed.append(sig)
        self.killed_pids.append(process.pid)
        if self.kill_ends_it:  # as the spawner reports a child killed during setup
            process.set_ready(FailedPrecondition("the container process ended during setup"))
            process.set_exited(128 + sig)

    async def _freeze(self, name: str) -> None:
        await self.may_freeze.wait()
        self.calls.append(name)
        if self.freeze_error is not None:
            raise self.freeze_error

    async def pause(self) -> None:
        await self._freeze("pause")

    async def resume(self) -> None:
        await self._freeze("resume")

    async def update(self, resources: dict[str, object], started: bool) -> None:
        self.updates.append((resources, started))

    async def delete(self) -> None:
        return None

    def release(self) -> None:
        return None


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def _add(self, kind: str, c: Container) -> None:
        self.seen.append((kind, c.id, c.exit_status))

    def task_create(self, c: Container) -> None:
        self._add("create", c)

    def task_start(self, c: Container) -> None:
        self._add("start", c)

    def task_exit(self, c: Container) -> None:
        self._add("exit", c)

    def task_delete(self, c: Container) -> None:
        self._add("delete", c)

    def task_oom(self, c: Container) -> None:
        self._add("oom", c)

    def task_paused(self, c: Container) -> None:
        self._add("paused", c)

    def task_resumed(self, c: Container) -> None:
        self._add("resumed", c)

    def task_exec_added(self, c: Container, e: ExecProcess) -> None:
        self._add(f"exec-added {e.id}", c)

    def task_exec_started(self, c: Container, e: ExecProcess) -> None:
        self._add(f"exec-started {e.id}", c)

    def task_exec_exit(self, c: Container, e: ExecProcess) -> None:
        self.seen.append((f"exec-exit {e.id}", c.id, e.exit_status))


def _setup(tmp_path: Path) -> tuple[Tasks, Events]:
    events = Events()
    return Tasks(host=None, events=events), events  # type: ignore[arg-type]


def _add(
    tasks: Tasks, tmp_path: Path, cid: str, supervisor: FakeSupervisor | None = None
) -> tuple[Container, FakeSupervisor]:
    bundle = tmp_path / cid
    bundle.mkdir()
    sup = supervisor or FakeSupervisor()
    c = Container(
        id=cid,
        bundle=str(bundle),
        namespace="ns",
        spec=spec.parse({"process": {"args": ["/x.wasm"]}}),
        stdio=StdioConfig("", "", ""),
        rootfs=str(bundle),
        io=ProcessIO.open(StdioConfig("", "", ""), container_id=cid, namespace="ns"),
        supervisor=sup,  # type: ignore[arg-type]
    )
    tasks.containers[cid] = c
    return c, sup


def test_an_exit_before_start_resumes_comes_after_task_start(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, events = _setup(tmp_path)
        _, sup = _add(tasks, tmp_path, "fast")
        start = asyncio.ensure_future(tasks.start("fast"))
        while sup.process is None:
            await asyncio.sleep(0)
        sup.process.set_exited(3)  # it ran and ended before the readiness news arrived
        sup.process.set_ready()
        pid = await start
        info = await asyncio.wait_for(tasks.wait("fast"), 5)
        assert (info.pid, info.exit_status) == (pid, 3)
        assert [e[0] for e in events.seen] == ["start", "exit"]

    asyncio.run(main())


def test_oom_is_published_before_the_exit(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, events = _setup(tmp_path)
        sups = {}
        for cid, ooms in (("oom", 1), ("fine", 0)):
            _, sups[cid] = _add(tasks, tmp_path, cid, FakeSupervisor(FakeCgroup(ooms)))
            start = asyncio.ensure_future(tasks.start(cid))
            while sups[cid].process is None:
                await asyncio.sleep(0)
            sups[cid].process.set_ready()
            await start
        sups["oom"].process.set_exited(137)
        sups["fine"].process.set_exited(0)
        await asyncio.wait_for(tasks.wait("fine"), 5)
        assert events.seen[2:] == [("oom", "oom", 137), ("exit", "oom", 137), ("exit", "fine", 0)]

    asyncio.run(main())


def test_a_process_that_never_gets_ready_is_killable_and_start_then_succeeds(
    tmp_path: Path,
) -> None:
    """A start function that loops for ever: Start waits, Kill reaches the process at once,
    and the task ends with the signal's status, as `ctr run --rm` then reports."""

    async def main() -> None:
        tasks, events = _setup(tmp_path)
        c, sup = _add(tasks, tmp_path, "loop")
        sup.kill_ends_it = True
        start = asyncio.ensure_future(tasks.start("loop"))
        while sup.process is None:
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert not start.done() and c.state is State.STARTING
        await tasks.kill("loop", "", signal.SIGKILL, False)
        assert sup.killed == [signal.SIGKILL]
        assert await asyncio.wait_for(start, 5) == sup.process.pid
        info = await asyncio.wait_for(tasks.wait("loop"), 5)
        assert info.exit_status == 137
        assert [e[0] for e in events.seen] == ["start", "exit"]

    asyncio.run(main())


def test_a_setup_failure_fails_start_with_its_reason(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, events = _setup(tmp_path)
        c, sup = _add(tasks, tmp_path, "bad")
        start = asyncio.ensure_future(tasks.start("bad"))
        while sup.process is None:
            await asyncio.sleep(0)
        sup.process.set_ready(FailedPrecondition("/x.wasm is not a valid wasm module"))
        sup.process.set_exited(1)
        with pytest.raises(FailedPrecondition, match="not a valid wasm module"):
            await start
        assert c.state is State.STOPPED
        assert (await asyncio.wait_for(tasks.wait("bad"), 5)).exit_status == 1
        assert events.seen == []  # no TaskStart for a task that never ran

    asyncio.run(main())


def test_a_spawner_lost_during_setup_ends_the_process_and_fails_start(tmp_path: Path) -> None:
    """Nobody knows how far setup got: the process is killed, not waited for (it might run
    its program for ever while Start waits)."""

    async def main() -> None:
        tasks, events = _setup(tmp_path)
        c, sup = _add(tasks, tmp_path, "orphan")
        start = asyncio.ensure_future(tasks.start("orphan"))
        while sup.process is None:
            await asyncio.sleep(0)
        sup.process.set_ready(Unavailable("the shim's spawner went away during setup"))
        await asyncio.sleep(0.05)
        assert sup.killed == [signal.SIGKILL]
        sup.process.set_exited(137)  # as the reaper reports it
        with pytest.raises(Unavailable, match="spawner went away"):
            await asyncio.wait_for(start, 5)
        assert c.state is State.STOPPED
        assert events.seen == []

    asyncio.run(main())


def test_a_kill_before_the_process_exists_waits_for_it(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, _ = _setup(tmp_path)
        _, sup = _add(tasks, tmp_path, "slow")
        sup.may_start.clear()
        start = asyncio.ensure_future(tasks.start("slow"))
        kill = asyncio.ensure_future(tasks.kill("slow", "", signal.SIGTERM, False))
        await asyncio.sleep(0.05)
        assert not kill.done() and sup.killed == []
        sup.may_start.set()
        await asyncio.wait_for(kill, 5)
        assert sup.killed == [signal.SIGTERM]
        assert sup.process is not None
        sup.process.set_ready()
        await start

    asyncio.run(main())


def test_kill_of_a_created_task_ends_its_wait_and_a_second_kill_is_not_found(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        tasks, _ = _setup(tmp_path)
        _, sup = _add(tasks, tmp_path, "c")
        waiter = asyncio.ensure_future(tasks.wait("c"))
        await tasks.kill("c", "", signal.SIGTERM, False)
        assert (await asyncio.wait_for(waiter, 5)).exit_status == 128 + signal.SIGTERM
        with pytest.raises(NotFound, match="process already finished"):
            await tasks.kill("c", "", signal.SIGKILL, False)
        assert sup.killed == []  # there was never a process to signal

    asyncio.run(main())


def test_delete_of_a_created_task_releases_its_wait(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, events = _setup(tmp_path)
        c, _ = _add(tasks, tmp_path, "never")
        waiter = asyncio.ensure_future(tasks.wait("never"))
        await asyncio.sleep(0)
        await tasks.delete("never")
        await asyncio.wait_for(waiter, 5)
        assert c.state is State.DELETED
        assert events.seen == [("delete", "never", 0)]
        with pytest.raises(NotFound):
            tasks.get("never")

    asyncio.run(main())


def test_a_refused_shutdown_exits_once_the_last_task_is_deleted(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, _ = _setup(tmp_path)
        _add(tasks, tmp_path, "a")
        _add(tasks, tmp_path, "b")
        calls: list[str] = []
        tasks.exit_when_idle(lambda: calls.append("exit"))
        assert calls == []
        await tasks.delete("a")
        assert calls == []
        await tasks.delete("b")
        assert calls == ["exit"]

    asyncio.run(main())


# ------------------------------------------------------------------ Pause / Resume / Update


async def _running(tasks: Tasks, tmp_path: Path, cid: str) -> tuple[Container, FakeSupervisor]:
    c, sup = _add(tasks, tmp_path, cid)
    start = asyncio.ensure_future(tasks.start(cid))
    while sup.process is None:
        await asyncio.sleep(0)
    sup.process.set_ready()
    await start
    return c, sup


def test_pause_and_resume_publish_their_events_and_refuse_a_second_call(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, events = _setup(tmp_path)
        c, sup = await _running(tasks, tmp_path, "p")
        sup.may_freeze.clear()
        pause = asyncio.ensure_future(tasks.pause("p"))
        await asyncio.sleep(0.01)
        assert c.state is State.PAUSING
        with pytest.raises(FailedPrecondition, match="cannot pause a pausing process"):
            await tasks.pause("p")
        sup.may_freeze.set()
        await asyncio.wait_for(pause, 5)
        assert c.state is State.PAUSED
        assert tasks.pids("p") == [c.pid]  # a paused process is still listed
        with pytest.raises(FailedPrecondition, match="cannot pause a paused process"):
            await tasks.pause("p")
        await tasks.resume("p")
        assert c.state is State.RUNNING
        with pytest.raises(FailedPrecondition, match="only a paused one"):
            await tasks.resume("p")
        assert sup.calls == ["pause", "resume"]
        assert [e[0] for e in events.seen] == ["start", "paused", "resumed"]

    asyncio.run(main())


def test_a_failed_freeze_leaves_the_task_running_and_publishes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, events = _setup(tmp_path)
        c, sup = await _running(tasks, tmp_path, "f")
        sup.freeze_error = Internal("freezer.state did not reach 'FROZEN'")
        with pytest.raises(Internal, match="did not reach"):
            await tasks.pause("f")
        assert c.state is State.RUNNING
        assert [e[0] for e in events.seen] == ["start"]

    asyncio.run(main())


def test_a_paused_task_is_killed_exits_and_is_deleted(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, events = _setup(tmp_path)
        c, sup = await _running(tasks, tmp_path, "k")
        await tasks.pause("k")
        with pytest.raises(FailedPrecondition, match="cannot delete a paused process"):
            await tasks.delete("k")
        await tasks.kill("k", "", signal.SIGKILL, False)
        assert sup.killed == [signal.SIGKILL] and c.state is State.PAUSED
        assert sup.process is not None
        sup.process.set_exited(137)
        assert (await asyncio.wait_for(tasks.wait("k"), 5)).exit_status == 137
        assert c.state is State.STOPPED
        await tasks.delete("k")
        assert [e[0] for e in events.seen] == ["start", "paused", "exit", "delete"]

    asyncio.run(main())


def test_an_exit_during_the_freeze_wins(tmp_path: Path) -> None:
    """A Kill that ends the process while Pause waits for the freezer: the task is STOPPED
    and no TaskPaused follows its TaskExit."""

    async def main() -> None:
        tasks, events = _setup(tmp_path)
        c, sup = await _running(tasks, tmp_path, "race")
        sup.may_freeze.clear()
        pause = asyncio.ensure_future(tasks.pause("race"))
        await asyncio.sleep(0.01)
        assert sup.process is not None
        sup.process.set_exited(137)
        await asyncio.sleep(0)
        sup.may_freeze.set()
        await asyncio.wait_for(pause, 5)
        assert c.state is State.STOPPED
        assert [e[0] for e in events.seen] == ["start", "exit"]

    asyncio.run(main())


def test_update_goes_to_the_supervisor_with_whether_the_process_runs(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, _ = _setup(tmp_path)
        _, created = _add(tasks, tmp_path, "created")
        await tasks.update("created", {"memory": {"limit": 1}})
        assert created.updates == [({"memory": {"limit": 1}}, False)]
        _, sup = await _running(tasks, tmp_path, "running")
        await tasks.update("running", {"pids": {"limit": 5}})
        await tasks.pause("running")
        await tasks.update("running", {"cpu": {"shares": 5}})
        assert [started for _, started in sup.updates] == [True, True]
        assert sup.process is not None
        sup.process.set_exited(0)
        await asyncio.wait_for(tasks.wait("running"), 5)
        with pytest.raises(FailedPrecondition, match="cannot update the resources of a stopped"):
            await tasks.update("running", {"pids": {"limit": 5}})
        assert len(sup.updates) == 2

    asyncio.run(main())


# ------------------------------------------------------------------ the wasm supervisor


class FreezerCgroup:
    """What WasmSupervisor uses of a Cgroup: the freezer, limits, the sweep of kill_all."""

    def __init__(self) -> None:
        self.is_frozen = False
        self.applied: list[Resources] = []
        self.swept: list[int] = []

    def freeze(self) -> None:
        self.is_frozen = True

    def thaw(self) -> None:
        self.is_frozen = False

    def update(self, res: Resources) -> None:
        self.applied.append(res)

    def kill_all(self, sig: int) -> None:
        self.swept.append(sig)


class FakeSpawner:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    async def kill(self, pid: int, sig: int) -> None:
        self.sent.append((pid, sig))


class FakeHost:
    def __init__(self) -> None:
        self.spawner = FakeSpawner()


def _wasm(
    cgroup: FreezerCgroup | None, memory_limit: int | None = 64 << 20
) -> tuple[WasmSupervisor, FakeHost]:
    host = FakeHost()
    cfg = RunConfig("c", "/", ("/x.wasm",), (), "/", (), memory_limit=memory_limit)
    resources = {"memory": {"limit": memory_limit}, "devices": [{"allow": False}]}
    sup = WasmSupervisor(host, cfg, None, None, cgroup, resources)  # type: ignore[arg-type]
    return sup, host


def test_a_sigkill_to_a_paused_wasm_container_thaws_it_other_signals_wait() -> None:
    async def main() -> None:
        cg = FreezerCgroup()
        sup, host = _wasm(cg)
        proc = Process(pid=42, pid_namespace_init=True)
        await sup.pause()
        assert cg.is_frozen
        await sup.kill(proc, signal.SIGWINCH, False)  # not terminating: pending until Resume
        assert cg.is_frozen
        await sup.kill(proc, signal.SIGTERM, True)  # a PID namespace's init: SIGKILL is sent
        assert host.spawner.sent == [(42, signal.SIGWINCH), (42, signal.SIGKILL)]
        assert cg.swept == [signal.SIGTERM]
        assert not cg.is_frozen

    asyncio.run(main())


def test_pause_without_a_cgroup_says_why() -> None:
    async def main() -> None:
        sup, _ = _wasm(None)
        with pytest.raises(FailedPrecondition, match=r"without a cgroup.*freezer"):
            await sup.pause()

    asyncio.run(main())


def test_wasm_update_raises_but_never_lowers_a_running_guests_memory() -> None:
    async def main() -> None:
        cg = FreezerCgroup()
        sup, _ = _wasm(cg)
        await sup.update({"memory": {"limit": 128 << 20}, "pids": {"limit": 9}}, True)
        assert cg.applied[-1].memory_limit == 128 << 20 and cg.applied[-1].pids_limit == 9
        assert sup.run_config.memory_limit == 64 << 20  # the running guest's cap stays
        with pytest.raises(FailedPrecondition, match=r"cannot lower the memory limit.*OOM"):
            await sup.update({"memory": {"limit": 32 << 20}}, True)
        with pytest.raises(InvalidArgument, match=r"cannot update cpu\.cpus of a wasm"):
            await sup.update({"cpu": {"cpus": "1"}, "devices": [{"allow": False}]}, True)
        assert len(cg.applied) == 1  # a refusal writes nothing

    asyncio.run(main())


def test_wasm_update_before_start_sets_the_limit_the_cap_is_computed_from() -> None:
    async def main() -> None:
        cg = FreezerCgroup()
        sup, _ = _wasm(cg)
        await sup.update({"memory": {"limit": 32 << 20}}, False)
        assert sup.run_config.memory_limit == 32 << 20
        await sup.update({"memory": {"limit": -1}}, False)
        assert sup.run_config.memory_limit is None

    asyncio.run(main())


def test_update_takes_linux_resources_json_and_names_anything_else() -> None:
    from google.protobuf import any_pb2

    from shim.task.service import linux_resources

    url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
    good = any_pb2.Any(type_url=url, value=b'{"memory": {"limit": 5}}')
    assert linux_resources(good) == {"memory": {"limit": 5}}
    windows = "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources"
    with pytest.raises(InvalidArgument, match=r"WindowsResources.*not linux resources"):
        linux_resources(any_pb2.Any(type_url=windows, value=b"{}"))
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        linux_resources(any_pb2.Any(type_url=url, value=b"{"))
    with pytest.raises(InvalidArgument, match="not a JSON object"):
        linux_resources(any_pb2.Any(type_url=url, value=b"[]"))


# ------------------------------------------------------------------ exec processes


def test_the_exec_spec_is_read_and_malformed_ones_are_named() -> None:
    doc = b'{"args": ["/t.wasm", "a"], "env": ["PATH=/bin"], "cwd": "/data", "terminal": false}'
    es = parse_exec_spec(doc)
    assert (es.args, es.env, es.cwd, es.terminal) == (
        ("/t.wasm", "a"),
        ("PATH=/bin",),
        "/data",
        False,
    )
    assert parse_exec_spec(b'{"args": ["x"]}').cwd == "/"
    for bad, words in (
        (b"{", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"args": []}', "process.args"),
        (b'{"args": ["x"], "env": [1]}', "process.env"),
        (b'{"args": ["x"], "cwd": "rel"}', "absolute"),
        (b'{"args": ["x"], "terminal": "false"}', "process.terminal"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            parse_exec_spec(bad)


def _exec_ready(tmp_path: Path, tasks: Tasks) -> tuple[Container, FakeSupervisor]:
    c, sup = _add(tasks, tmp_path, "init")
    c.exec_program = lambda host, args, env, cwd: ("cfg", "entry")  # type: ignore[method-assign,assignment,return-value]
    c.exec_setup = lambda pid, cwd, tty: ("setup", pid, cwd)  # type: ignore[method-assign,assignment,return-value]
    return c, sup


async def _start_init(tasks: Tasks, sup: FakeSupervisor) -> None:
    start = asyncio.ensure_future(tasks.start("init"))
    while sup.process is None:
        await asyncio.sleep(0)
    sup.process.set_ready()
    await start


SPEC = b'{"args": ["/t.wasm"], "cwd": "/w"}'


def test_an_exec_runs_beside_the_init_with_its_own_state_and_events(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, events = _setup(tmp_path)
        c, sup = _exec_ready(tmp_path, tasks)
        with pytest.raises(FailedPrecondition, match="created container"):
            await tasks.exec_add("init", "e1", StdioConfig("", "", ""), SPEC)
        await _start_init(tasks, sup)
        await tasks.exec_add("init", "e1", StdioConfig("", "", ""), SPEC)
        with pytest.raises(AlreadyExists):
            await tasks.exec_add("init", "e1", StdioConfig("", "", ""), SPEC)
        assert tasks.get_exec("init", "e1").state is State.CREATED
        start = asyncio.ensure_future(tasks.start("init", "e1"))
        while not sup.exec_processes:
            await asyncio.sleep(0)
        proc = sup.exec_processes[0]
        assert sup.exec_setups == [("setup", c.pid, "/w")]  # joins the init's pid
        proc.set_ready()
        assert await start == proc.pid
        assert tasks.get_exec("init", "e1").state is State.RUNNING
        assert tasks.pids("init") == [c.pid, proc.pid]
        proc.set_exited(7)
        info = await asyncio.wait_for(tasks.wait("init", "e1"), 5)
        assert (info.pid, info.exit_status) == (proc.pid, 7)
        assert c.state is State.RUNNING  # the init runs on
        with pytest.raises(NotFound):
            await tasks.kill("init", "e1", signal.SIGTERM, False)
        await tasks.delete("init", "e1")
        with pytest.raises(NotFound, match="exec e1 not found"):
            tasks.get_exec("init", "e1")
        assert [e[0] for e in events.seen] == [
            "start",
            "exec-added e1",
            "exec-started e1",
            "exec-exit e1",
        ]
        assert events.seen[-1][2] == 7

    asyncio.run(main())


def test_the_init_exiting_kills_its_running_execs(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, _ = _setup(tmp_path)
        _, sup = _exec_ready(tmp_path, tasks)
        await _start_init(tasks, sup)
        await tasks.exec_add("init", "long", StdioConfig("", "", ""), SPEC)
        start = asyncio.ensure_future(tasks.start("init", "long"))
        while not sup.exec_processes:
            await asyncio.sleep(0)
        sup.exec_processes[0].set_ready()
        await start
        assert sup.process is not None
        sup.process.set_exited(137)
        for _ in range(100):
            if sup.killed_pids:
                break
            await asyncio.sleep(0)
        assert (sup.killed, sup.killed_pids) == ([signal.SIGKILL], [sup.exec_processes[0].pid])

    asyncio.run(main())


def test_exec_refusals_name_what_is_not_supported(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, _ = _setup(tmp_path)
        _, sup = _exec_ready(tmp_path, tasks)
        await _start_init(tasks, sup)
        tty = StdioConfig("", "", "", terminal=True)
        with pytest.raises(InvalidArgument, match="terminal=False but the request says"):
            await tasks.exec_add("init", "t", tty, SPEC)
        with pytest.raises(InvalidArgument, match="terminal=True but the request says"):
            await tasks.exec_add(
                "init", "t", StdioConfig("", "", ""), b'{"args":["x"],"terminal":true}'
            )
        await tasks.exec_add("init", "p", StdioConfig("", "", ""), SPEC)
        await tasks.exec_add("init", "added-before-pause", StdioConfig("", "", ""), SPEC)
        start = asyncio.ensure_future(tasks.start("init", "p"))
        while not sup.exec_processes:
            await asyncio.sleep(0)
        sup.exec_processes[0].set_ready()
        await start
        await tasks.pause("init")
        # An exec added before Pause is not started into the frozen cgroup (it would freeze
        # with its Start waiting for Resume): it ends as a failed start.
        with pytest.raises(FailedPrecondition, match="is paused"):
            await tasks.start("init", "added-before-pause")
        assert len(sup.exec_processes) == 1
        with pytest.raises(FailedPrecondition, match="resume it first"):
            await tasks.kill("init", "p", signal.SIGKILL, False)
        assert sup.killed == []  # nothing was sent, nothing thawed
        with pytest.raises(FailedPrecondition, match="paused container"):
            await tasks.exec_add("init", "q", StdioConfig("", "", ""), SPEC)
        with pytest.raises(NotFound):
            await tasks.start("init", "never-added")

    asyncio.run(main())


def test_a_native_exec_keeps_its_process_spec_and_a_tty_exec_can_be_resized(
    tmp_path: Path,
) -> None:
    """In a native container the exec's process spec goes to runc as it came (no wasm
    program is resolved); an exec with a terminal gets one, and ResizePty reaches it."""

    async def main() -> None:
        tasks, _ = _setup(tmp_path)
        _, sup = _exec_ready(tmp_path, tasks)
        await _start_init(tasks, sup)
        tty_spec = b'{"args": ["/bin/sh"], "terminal": true}'
        tty = await tasks.exec_add("init", "t", StdioConfig("", "", "", terminal=True), tty_spec)
        assert tty.io.console is not None  # the shim made the pair (a wasm container)
        tasks.resize_pty("init", "t", 100, 30)
        tasks.resize_pty("init", "", 100, 30)  # the init has no terminal: ignored
        with pytest.raises(NotFound):
            tasks.resize_pty("init", "nope", 1, 1)
        await tasks.delete("init", "t")
        sup.kind = Workload.NATIVE
        e = await tasks.exec_add("init", "n", StdioConfig("", "", ""), SPEC)
        assert (e.process_json, e.run_config, e.entry) == (SPEC, None, None)
        native_tty = await tasks.exec_add(
            "init", "nt", StdioConfig("", "", "", terminal=True), tty_spec
        )
        assert native_tty.io.console is None  # runc makes it and sends the master later
        await tasks.delete("init", "n")
        await tasks.delete("init", "nt")

    asyncio.run(main())
