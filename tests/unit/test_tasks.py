"""The task logic (shim/task/tasks.py) with fakes at its edges: the order of events, exits that
race Start, Kill of a process that never becomes ready, Kill and Delete of tasks that never ran,
OOM reporting, and shutdown when idle.

The supervisor (the process side) is a fake whose processes the test drives; the Container, its
state table and its stdio are real.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from shim.errors import FailedPrecondition, NotFound, Unavailable
from shim.io.stdio import ProcessIO, StdioConfig
from shim.oci import spec
from shim.proc.process import Process
from shim.task.container import Container
from shim.task.states import State
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

    def held(self) -> dict[str, str]:
        return {}

    async def start(self, stdio: tuple[int, int, int]) -> Process:
        await self.may_start.wait()
        self.process = Process(pid=1000 + len(self.killed))
        return self.process

    async def kill(self, process: Process, sig: int, all_: bool) -> None:
        self.killed.append(sig)
        if self.kill_ends_it:  # as the spawner reports a child killed during setup
            process.set_ready(FailedPrecondition("the container process ended during setup"))
            process.set_exited(128 + sig)

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
