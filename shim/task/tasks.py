"""The task logic of one shim: the containers it serves and what each RPC does to them.

Plain arguments in, plain values out: shim/task/service.py adapts the ttrpc wire types to these
calls, and events leave through the `EventSink` protocol, so this module is testable without
protobuf or sockets. The public method checks the state table (shim/task/states.py), a private
step acts, and blocking host work (mounts, FIFOs, cgroups) runs in a worker thread so one slow
Create never stalls another container's Wait or Kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from runtimes.base import Runtime
from shim.cgroups import Cgroup
from shim.errors import AlreadyExists, NotFound, ShimError
from shim.logs import current_container
from shim.task.container import Container, CreateConfig
from shim.task.native import watch_exit
from shim.task.states import Event, State, next_state
from shim.task.workload import Kind
from shim.zygote import ZygoteClient

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Where task events go (containerd, or a list in tests). Must never block or raise."""

    def task_create(self, c: Container) -> None: ...
    def task_start(self, c: Container) -> None: ...
    def task_exit(self, c: Container) -> None: ...
    def task_delete(self, c: Container) -> None: ...
    def task_oom(self, c: Container) -> None: ...


@dataclass(frozen=True, slots=True)
class ExitInfo:
    pid: int
    exit_status: int
    exited_at_ns: int


class Tasks:
    """Every container this shim serves, keyed by container id."""

    def __init__(
        self,
        runtime: Runtime,
        zygote: ZygoteClient,
        events: EventSink,
        cache_dir: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.zygote = zygote
        self.events = events
        self.cache_dir = cache_dir
        self.containers: dict[str, Container] = {}
        self._by_pid: dict[int, Container] = {}
        self._creating: set[str] = set()
        self._on_idle: Callable[[], None] | None = None

    def get(self, container_id: str, exec_id: str = "") -> Container:
        """The container, or NotFound; exec processes do not exist (Exec is UNIMPLEMENTED)."""
        c = self.containers.get(container_id)
        if c is None:
            raise NotFound(f"container {container_id} not found")
        if exec_id:
            raise NotFound(f"exec {exec_id} not found in container {container_id}")
        return c

    # ------------------------------------------------------------------ Create / Start

    async def create(self, cfg: CreateConfig) -> Container:
        if cfg.id in self.containers or cfg.id in self._creating:
            raise AlreadyExists(f"container {cfg.id} already exists")
        self._creating.add(cfg.id)
        work = asyncio.ensure_future(
            asyncio.to_thread(Container.prepare, cfg, self.runtime, self.cache_dir)
        )
        # The id stays reserved until the preparation really ends, cancelled or not: a retried
        # Create must not mount the same bundle while the first one is still at work.
        work.add_done_callback(lambda _: self._creating.discard(cfg.id))
        try:
            # Shielded: if containerd hangs up mid-Create, the thread still finishes, and
            # what it acquired is released instead of leaking.
            c = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(self._release_abandoned)
            raise
        self.containers[cfg.id] = c
        log.info("created (entrypoint %s)", c.entry.host_path if c.entry else "?")
        self.events.task_create(c)
        return c

    async def start(self, container_id: str, exec_id: str = "") -> int:
        c = self.get(container_id, exec_id)
        c.state = next_state(c.state, Event.START)
        # Shielded: once the process exists, its bookkeeping must complete even if
        # containerd hangs up on this call, or the container would stay STARTING forever.
        return await asyncio.shield(self._start(c))

    async def _start(self, c: Container) -> int:
        assert c.io is not None
        try:
            pid = await (self._start_native(c) if c.kind is Kind.NATIVE else self._start_wasm(c))
        except Exception as e:  # ShimError, or the host failing under us (OSError)
            c.state = next_state(c.state, Event.START_FAILED)
            c.set_exited(1)
            c.started.set()
            await asyncio.to_thread(c.io.close)
            log.warning("start failed: %s", e)
            raise
        # The process exists: from here on nothing may fail the Start, or the task would be
        # STOPPED while its process runs on. What follows is best effort.
        c.io.started()
        try:
            await asyncio.to_thread(c.write_pid_file)
        except OSError as e:
            log.warning(
                "cannot record pid %d in the bundle (delete after a crash will not find it): %s",
                pid,
                e,
            )
        c.state = next_state(c.state, Event.STARTED)
        self.events.task_start(c)  # before any TaskExit: the exit waits for this point
        c.started.set()
        log.info("started pid %d", pid)
        if c.pending_exit is not None:
            self._exited(c, c.pending_exit)
        return pid

    async def _start_wasm(self, c: Container) -> int:
        """Fork the container process from the zygote (shim/zygote.py)."""
        assert c.io is not None and c.run_config is not None and c.entry is not None
        pid = await self.zygote.spawn(c.run_config, c.entry, c.process_setup(), c.io.child_fds())
        c.pid = pid
        self._by_pid[pid] = c
        self.zygote.claim(pid)  # an exit that already happened is held as pending_exit
        return pid

    async def _start_native(self, c: Container) -> int:
        """`runc create` + `runc start`; the init is reparented to us and watched by pidfd."""
        assert c.io is not None and c.runc is not None
        systemd = c.spec.cgroups_path.count(":") == 2  # "slice:prefix:name"
        pid = await asyncio.to_thread(
            c.runc.create_and_start, c.id, c.bundle, c.io.child_fds(), systemd
        )
        c.pid = pid
        self._by_pid[pid] = c
        watch_exit(pid, self.on_process_exit)
        if c.spec.cgroups_path:
            try:
                c.cgroup = await asyncio.to_thread(Cgroup.load, c.spec.cgroups_path)
            except ShimError as e:
                log.warning("no stats for %s: %s", c.id, e)
        return pid

    # ------------------------------------------------------------------ exits

    def on_process_exit(self, pid: int, status: int) -> None:
        """Called by the zygote client for every container process that ends."""
        c = self._by_pid.pop(pid, None)
        if c is None:
            return  # a process whose Start failed: already accounted for
        current_container.set(c.id)
        if c.state is State.STARTING:
            c.pending_exit = status  # Start has not published TaskStart yet
            return
        self._exited(c, status)

    def _exited(self, c: Container, status: int) -> None:
        c.state = next_state(c.state, Event.EXIT)
        c.set_exited(status)
        log.info("exited with status %d", status)
        if self._oom_killed(c):
            # Before the exit: CRI reports a container as OOMKilled only when /tasks/oom for
            # it arrived before /tasks/exit, and the publisher keeps this order.
            log.warning("killed by the kernel's OOM killer (cgroup memory limit)")
            self.events.task_oom(c)
        self.events.task_exit(c)
        if c.io is not None:
            asyncio.get_running_loop().run_in_executor(None, c.io.close)

    @staticmethod
    def _oom_killed(c: Container) -> bool:
        """Whether the kernel OOM-killed something in the container's cgroup (a small file
        read, done on exit only)."""
        if c.cgroup is None:
            return False
        try:
            return c.cgroup.oom_killed_count() > 0
        except (ShimError, OSError):
            return False

    async def wait(self, container_id: str, exec_id: str = "") -> ExitInfo:
        c = self.get(container_id, exec_id)
        await c.exited.wait()
        return ExitInfo(c.pid, c.exit_status, c.exited_at_ns)

    # ------------------------------------------------------------------ Kill / Delete

    async def kill(self, container_id: str, exec_id: str, sig: int, all_: bool) -> None:
        c = self.get(container_id, exec_id)
        next_state(c.state, Event.KILL)  # raises NotFound once the process has finished
        if c.state is State.CREATED:
            # No process exists yet: the task ends as if the signal had killed it, so a
            # pending Wait returns (containerd relies on this to abort a created task).
            self._exited(c, 128 + sig)
            return
        if c.state is State.STARTING:
            await c.started.wait()
            next_state(c.state, Event.KILL)
        if c.runc is not None:
            await asyncio.to_thread(c.runc.kill, c.id, c.bundle, sig, all_)
            return
        await self.zygote.kill(c.pid, sig)
        if all_ and c.cgroup is not None:
            await asyncio.to_thread(c.cgroup.kill_all, sig)

    async def delete(self, container_id: str, exec_id: str = "") -> ExitInfo:
        c = self.get(container_id, exec_id)
        c.state = next_state(c.state, Event.DELETE)
        try:
            await asyncio.shield(asyncio.to_thread(c.release))
        finally:
            c.state = next_state(c.state, Event.DELETED)
            del self.containers[c.id]
            c.exited.set()  # a Wait on a task deleted before it ever ran returns now
        self.events.task_delete(c)
        log.info("deleted")
        self._check_idle()
        return ExitInfo(c.pid, c.exit_status, c.exited_at_ns)

    # ------------------------------------------------------------------ queries

    def pids(self, container_id: str) -> list[int]:
        c = self.get(container_id)
        if c.cgroup is not None and c.state is State.RUNNING:
            pids = c.cgroup.pids()
            if pids:
                return pids
        return [c.pid] if c.pid and c.state is State.RUNNING else []

    async def stats(self, container_id: str) -> Message:
        c = self.get(container_id)
        if c.cgroup is None:
            raise NotFound(f"container {container_id} has no cgroup; no stats")
        return await asyncio.to_thread(c.cgroup.metrics)

    def close_io(self, container_id: str, exec_id: str, stdin: bool) -> None:
        c = self.get(container_id, exec_id)
        if stdin and c.io is not None:
            c.io.close_stdin()

    def shutdown_ok(self) -> bool:
        """Shutdown may exit the shim only when no container is left."""
        return not self.containers and not self._creating

    def exit_when_idle(self, callback: Callable[[], None]) -> None:
        """A Shutdown came while containers (or a Create) were still here: call `callback`
        as soon as none is left. containerd sends Shutdown once per task it deletes, and
        after a Create it abandoned it sends none again, so a refusal must not be final."""
        self._on_idle = callback
        self._check_idle()

    def _check_idle(self) -> None:
        if self._on_idle is not None and self.shutdown_ok():
            callback, self._on_idle = self._on_idle, None
            callback()

    def _release_abandoned(self, work: asyncio.Future[Container]) -> None:
        """A Create whose caller went away: undo what the finished preparation acquired."""
        if work.cancelled() or work.exception() is not None:
            self._check_idle()
            return
        release = asyncio.get_running_loop().run_in_executor(None, work.result().release)
        release.add_done_callback(lambda _: self._check_idle())

    async def kill_everything(self) -> None:
        """Shutdown(now=true) or a signal: end every process and release every container."""
        starting = [c.started.wait() for c in self.containers.values() if c.state is State.STARTING]
        if starting:
            await asyncio.wait_for(asyncio.gather(*starting), 30)
        for c in list(self.containers.values()):
            if c.state is State.RUNNING:
                with contextlib.suppress(ShimError):
                    await self.kill(c.id, "", signal.SIGKILL, True)
        for c in list(self.containers.values()):
            if c.state is State.RUNNING:
                try:
                    await asyncio.wait_for(c.exited.wait(), 5)
                except TimeoutError:
                    log.warning("container %s did not exit after SIGKILL", c.id)
            await asyncio.to_thread(c.release)
        self.containers.clear()
