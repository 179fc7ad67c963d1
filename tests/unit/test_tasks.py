"""The task logic (shim/task/tasks.py) with fakes at its edges: the order of events, exits that
race Start, Kill and Delete of tasks that never ran, OOM reporting, and shutdown when idle.

The zygote and the cgroup are fakes; the Container, its state table and its stdio are real.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtimes.base import Entrypoint, EntrypointKind, Preopen, RunConfig
from shim.errors import NotFound
from shim.io.stdio import ProcessIO, StdioConfig
from shim.oci import spec
from shim.task.container import Container
from shim.task.states import State
from shim.task.tasks import Tasks


class FakeZygote:
    """Spawns nothing; exits are injected by the test, held until claimed like the real one."""

    def __init__(self) -> None:
        self.next_pid = 1000
        self.on_spawn: Callable[[int], None] = lambda pid: None
        self.held: dict[int, int] = {}
        self.killed: list[tuple[int, int]] = []
        self.tasks: Tasks | None = None

    async def spawn(self, *args: Any) -> int:
        self.next_pid += 1
        self.on_spawn(self.next_pid)
        return self.next_pid

    def claim(self, pid: int) -> None:
        if pid in self.held and self.tasks is not None:
            self.tasks.on_process_exit(pid, self.held.pop(pid))

    async def kill(self, pid: int, sig: int) -> None:
        self.killed.append((pid, sig))


class FakeCgroup:
    def __init__(self, ooms: int = 0) -> None:
        self.ooms = ooms

    def join_files(self) -> tuple[str, ...]:
        return ()

    def memory_usage_file(self) -> str | None:
        return None

    def oom_killed_count(self) -> int:
        return self.ooms

    def remove(self) -> None:
        pass


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


def _setup(tmp_path: Path) -> tuple[Tasks, FakeZygote, Events]:
    zygote, events = FakeZygote(), Events()
    tasks = Tasks(runtime=None, zygote=zygote, events=events)  # type: ignore[arg-type]
    zygote.tasks = tasks
    return tasks, zygote, events


def _add(tasks: Tasks, tmp_path: Path, cid: str, cgroup: FakeCgroup | None = None) -> Container:
    bundle = tmp_path / cid
    bundle.mkdir()
    c = Container(
        id=cid,
        bundle=str(bundle),
        namespace="ns",
        spec=spec.parse({"process": {"args": ["/x.wasm"]}}),
        stdio=StdioConfig("", "", ""),
        rootfs=str(bundle),
        io=ProcessIO.null(),
        cgroup=cgroup,  # type: ignore[arg-type]
        entry=Entrypoint(str(bundle / "x.wasm"), "/x.wasm", None, EntrypointKind.MODULE),
        run_config=RunConfig(cid, str(bundle), ("/x.wasm",), (), "/", (Preopen("/", "/", True),)),
    )
    tasks.containers[cid] = c
    return c


def test_an_exit_before_start_resumes_comes_after_task_start(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, zygote, events = _setup(tmp_path)
        _add(tasks, tmp_path, "fast")
        zygote.on_spawn = lambda pid: zygote.held.__setitem__(pid, 3)
        pid = await tasks.start("fast")
        info = await asyncio.wait_for(tasks.wait("fast"), 5)
        assert (info.pid, info.exit_status) == (pid, 3)
        assert [e[0] for e in events.seen] == ["start", "exit"]

    asyncio.run(main())


def test_oom_is_published_before_the_exit(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, _, events = _setup(tmp_path)
        _add(tasks, tmp_path, "oom", FakeCgroup(ooms=1))
        _add(tasks, tmp_path, "fine", FakeCgroup(ooms=0))
        pids = {cid: await tasks.start(cid) for cid in ("oom", "fine")}
        tasks.on_process_exit(pids["oom"], 137)
        tasks.on_process_exit(pids["fine"], 0)
        assert events.seen[2:] == [("oom", "oom", 137), ("exit", "oom", 137), ("exit", "fine", 0)]

    asyncio.run(main())


def test_kill_of_a_created_task_ends_its_wait_and_a_second_kill_is_not_found(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        tasks, zygote, _ = _setup(tmp_path)
        _add(tasks, tmp_path, "c")
        waiter = asyncio.ensure_future(tasks.wait("c"))
        await tasks.kill("c", "", signal.SIGTERM, False)
        assert (await asyncio.wait_for(waiter, 5)).exit_status == 128 + signal.SIGTERM
        with pytest.raises(NotFound, match="process already finished"):
            await tasks.kill("c", "", signal.SIGKILL, False)
        assert zygote.killed == []  # there was never a process to signal

    asyncio.run(main())


def test_delete_of_a_created_task_releases_its_wait(tmp_path: Path) -> None:
    async def main() -> None:
        tasks, _, events = _setup(tmp_path)
        c = _add(tasks, tmp_path, "never")
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
        tasks, _, _ = _setup(tmp_path)
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
