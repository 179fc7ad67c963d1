"""The task logic of one shim: the containers it serves and what each RPC does to them.

Plain arguments in, plain values out: shim/task/service.py adapts the ttrpc wire types to these
calls, and events leave through the `EventSink` protocol. The public method checks the state
table (shim/task/states.py), a private step acts through the container's `Supervisor`
(shim/task/supervisor.py: wasm or native, this module does not know which), and blocking
host work runs in a worker thread so one slow Create never stalls another container's Wait
or Kill: Create's and Delete's (mounts, stdio, unmounts) on a bounded set of threads of their
own, each with a deadline (shim/workers.py), the small rest (a cgroup file, the bundle's
record) on asyncio's default executor.

Start and Kill. A container process exists (its pid is known) the moment the supervisor has
created it, long before it is ready (its program compiled, loaded and instantiated). Kill
signals it at any point of that: a start function that loops for ever, or a compile that
takes minutes, never makes a task unkillable. If the process ends before it was ready, Start
fails with its reason, unless a Kill ended it: then Start succeeds (the container ran, and was
killed) and the exit is reported like any other. TaskStart is published before the exit is
even looked at, so it always precedes TaskExit.

Exec adds an exec process (shim/task/execs.py) to a running container: a wasm program is
resolved at Exec, so a missing one fails there; Start, Wait, Kill, Delete, CloseIO and
ResizePty with its exec id act on it alone, through the same supervisor as the init (the
spawner forks it into the init's namespaces, shim/proc/child.py; runc exec for a native
container). TaskExecAdded, TaskExecStarted and a
TaskExit carrying the exec id are published; when the init exits, every exec process still
running is sent SIGKILL (in a PID namespace of its own the kernel has done so already).

Pause and Resume pass through PAUSING and RESUMING while the freezer works, so a second call
fails instead of racing the first; TaskPaused and TaskResumed are published once the kernel
reports the new state. A process that exits meanwhile (a Kill) is STOPPED, and the late
freeze or thaw then changes nothing and publishes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shim.cgroups import Cgroup
from shim.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ShimError,
    Unavailable,
)
from shim.io.stdio import ProcessIO, StdioConfig
from shim.logs import current_container
from shim.proc.process import Process
from shim.task.container import Container, CreateConfig
from shim.task.execs import ExecProcess, parse_exec_spec
from shim.task.states import LIVE, Event, State, next_state
from shim.task.supervisor import Host
from shim.task.workload import Workload
from shim.workers import Workers, within

log = logging.getLogger(__name__)

LIVE_OR_STARTING = LIVE | {State.STARTING}

START_FAILED_STATUS = 1  # the exit status of a task whose process never ran
HOST_WORKERS = 8  # threads for Create's and Delete's host work (shim/workers.py)
ADMISSION = 10.0  # seconds a Create or Delete waits for one of them to be free
CREATE_TIMEOUT = 60.0  # seconds Create's host work may take before Create gives up on it
DELETE_TIMEOUT = 30.0  # the same for Delete's release


class EventSink(Protocol):
    """Where task events go (containerd, or a list in tests). Must never block or raise."""

    def task_create(self, c: Container) -> None: ...
    def task_start(self, c: Container) -> None: ...
    def task_exit(self, c: Container) -> None: ...
    def task_delete(self, c: Container) -> None: ...
    def task_oom(self, c: Container) -> None: ...
    def task_paused(self, c: Container) -> None: ...
    def task_resumed(self, c: Container) -> None: ...
    def task_exec_added(self, c: Container, e: ExecProcess) -> None: ...
    def task_exec_started(self, c: Container, e: ExecProcess) -> None: ...
    def task_exec_exit(self, c: Container, e: ExecProcess) -> None: ...


@dataclass(frozen=True, slots=True)
class ExitInfo:
    pid: int
    exit_status: int
    exited_at_ns: int


class Tasks:
    """Every container this shim serves, keyed by container id."""

    def __init__(self, host: Host, events: EventSink) -> None:
        self.host = host
        self.events = events
        self.containers: dict[str, Container] = {}
        self._creating: set[str] = set()
        self._background: set[asyncio.Future[None]] = set()  # held until done (asyncio's rule)
        self._on_idle: Callable[[], None] | None = None
        self._work = Workers("Create and Delete", HOST_WORKERS, ADMISSION)

    def get(self, container_id: str) -> Container:
        """The container, or NotFound."""
        c = self.containers.get(container_id)
        if c is None:
            raise NotFound(f"container {container_id} not found")
        return c

    def get_exec(self, container_id: str, exec_id: str) -> ExecProcess:
        """An exec process of the container, or NotFound."""
        e = self.get(container_id).execs.get(exec_id)
        if e is None:
            raise NotFound(f"exec {exec_id} not found in container {container_id}")
        return e

    # ------------------------------------------------------------------ Create / Start

    async def create(self, cfg: CreateConfig) -> Container:
        if cfg.id in self.containers or cfg.id in self._creating:
            raise AlreadyExists(f"container {cfg.id} already exists")
        self._creating.add(cfg.id)
        work = asyncio.ensure_future(
            self._work.call(f"create {cfg.id}", lambda: Container.prepare(cfg, self.host))
        )
        # The id stays reserved until the preparation really ends, cancelled or not: a retried
        # Create must not mount the same bundle while the first one is still at work.
        work.add_done_callback(lambda _: self._creating.discard(cfg.id))
        try:
            # Shielded: if containerd hangs up mid-Create, or it passes its deadline, the
            # thread still finishes, and what it acquired is released instead of leaking.
            c = await within(work, CREATE_TIMEOUT, f"create {cfg.id}")
        except (asyncio.CancelledError, DeadlineExceeded):
            work.add_done_callback(self._release_abandoned)
            raise
        self.containers[cfg.id] = c
        log.info("created (%s, entrypoint %s)", c.kind.value, c.spec.process.args[0])
        self.events.task_create(c)
        return c

    async def start(self, container_id: str, exec_id: str = "") -> int:
        if exec_id:
            return await self._start_exec(container_id, exec_id)
        c = self.get(container_id)
        c.state = next_state(c.state, Event.START)
        # Shielded: once the process exists, its bookkeeping must complete even if
        # containerd hangs up on this call, or the container would stay STARTING forever.
        return await asyncio.shield(self._start(c))

    async def _start(self, c: Container) -> int:
        assert c.io is not None and c.supervisor is not None
        try:
            proc = await c.supervisor.start(c.io.child_fds(), c.io.attach_console)
        except Exception as e:  # ShimError, or the host failing under us (OSError)
            c.spawned.set()
            await self._start_failed(c, START_FAILED_STATUS)
            log.warning("start failed: %s", e)
            raise
        c.process, c.pid = proc, proc.pid
        c.spawned.set()
        c.io.started()
        try:
            await asyncio.to_thread(c.record)
        except (OSError, ValueError) as e:
            log.warning("cannot record pid %d (delete after a crash will miss it): %s", c.pid, e)
        try:
            await proc.ready
        except ShimError as e:
            if c.kill_signal is None:  # the program cannot run: Start fails with the reason
                if isinstance(e, Unavailable):  # the spawner died: nobody knows how far
                    with contextlib.suppress(ShimError, OSError):  # setup got; end it
                        await c.supervisor.kill(proc, signal.SIGKILL, False)
                await self._start_failed(c, await proc.exited)
                log.warning("start failed: %s", e)
                raise
            log.info("killed (signal %d) before it was ready", c.kill_signal)
        c.state = next_state(c.state, Event.STARTED)
        self.events.task_start(c)  # before any TaskExit: the exit is only watched from here
        log.info("started pid %d", c.pid)
        if proc.note:
            log.info("compiled code: %s", proc.note)
        proc.exited.add_done_callback(lambda f: self._exited(c, f.result()))
        return c.pid

    async def _start_failed(self, c: Container, status: int) -> None:
        c.state = next_state(c.state, Event.START_FAILED)
        c.set_exited(status)
        assert c.io is not None
        await self._work.call(f"close the stdio of {c.id}", c.io.close)

    # ------------------------------------------------------------------ exits

    def _exited(self, c: Container, status: int) -> None:
        current_container.set(c.id)
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
            self._work.start(f"close the stdio of {c.id}", c.io.close)
        if any(e.process is not None and e.state in LIVE_OR_STARTING for e in c.execs.values()):
            # In a PID namespace of its own the kernel ends them with the init; elsewhere
            # nothing would.
            task = asyncio.ensure_future(self._kill_execs(c))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _kill_execs(self, c: Container) -> None:
        """SIGKILL every exec process of `c` that runs (the init has exited)."""
        for e in list(c.execs.values()):
            if e.process is not None and e.state in LIVE_OR_STARTING:
                with contextlib.suppress(ShimError, OSError):
                    assert c.supervisor is not None
                    await c.supervisor.kill(e.process, signal.SIGKILL, False)
                    log.info("killed exec %s (pid %d): the init exited", e.id, e.pid)

    @staticmethod
    def _oom_killed(c: Container) -> bool:
        """Whether the kernel OOM-killed something in the container's cgroup (a small file
        read, done on exit only)."""
        cgroup = c.cgroup
        if cgroup is None:
            return False
        try:
            return cgroup.oom_killed_count() > 0
        except (ShimError, OSError):
            return False

    async def wait(self, container_id: str, exec_id: str = "") -> ExitInfo:
        c: Container | ExecProcess = (
            self.get_exec(container_id, exec_id) if exec_id else self.get(container_id)
        )
        await c.exited.wait()
        return ExitInfo(c.pid, c.exit_status, c.exited_at_ns)

    # ------------------------------------------------------------------ Kill / Delete

    async def kill(self, container_id: str, exec_id: str, sig: int, all_: bool) -> None:
        if exec_id:
            await self._kill_exec(self.get(container_id), self.get_exec(container_id, exec_id), sig)
            return
        c = self.get(container_id)
        next_state(c.state, Event.KILL)  # raises NotFound once the process has finished
        if c.state is State.CREATED:
            # No process exists yet: the task ends as if the signal had killed it, so a
            # pending Wait returns (containerd relies on this to abort a created task).
            self._exited(c, 128 + sig)
            return
        if c.state is State.STARTING:
            await c.spawned.wait()  # the process exists (or Start failed) within moments
            next_state(c.state, Event.KILL)
            if c.process is not None and not c.process.ready.done():
                c.kill_signal = sig
        assert c.supervisor is not None and c.process is not None
        await c.supervisor.kill(c.process, sig, all_)

    async def delete(self, container_id: str, exec_id: str = "") -> ExitInfo:
        if exec_id:
            return await self._delete_exec(self.get(container_id), exec_id)
        c = self.get(container_id)
        c.state = next_state(c.state, Event.DELETE)
        try:
            if c.supervisor is not None:
                await asyncio.shield(c.supervisor.delete())
            release = self._work.call(f"delete {c.id}", c.release)
            await within(asyncio.ensure_future(release), DELETE_TIMEOUT, f"delete {c.id}")
        finally:
            c.state = next_state(c.state, Event.DELETED)
            del self.containers[c.id]
            c.exited.set()  # a Wait on a task deleted before it ever ran returns now
        self.events.task_delete(c)
        log.info("deleted")
        self._check_idle()
        return ExitInfo(c.pid, c.exit_status, c.exited_at_ns)

    # ------------------------------------------------------------------ exec processes

    async def exec_add(
        self, container_id: str, exec_id: str, stdio: StdioConfig, spec: bytes
    ) -> ExecProcess:
        """Exec: a new exec process of a running container (wasm: the program is resolved
        here, so a missing one fails Exec with the reason; native: runc exec at Start),
        created but not started."""
        c = self.get(container_id)
        if not exec_id:
            raise InvalidArgument("exec: an exec id is required")
        if exec_id in c.execs:
            raise AlreadyExists(f"exec {exec_id} already exists in container {container_id}")
        if c.state is not State.RUNNING:
            raise FailedPrecondition(
                f"cannot exec in a {c.state.value} container (only in a running one)"
            )
        es = parse_exec_spec(spec)
        if es.terminal != stdio.terminal:
            raise InvalidArgument(
                f"exec {exec_id}: the process spec says terminal={es.terminal} but the "
                f"request says terminal={stdio.terminal}"
            )
        native = c.kind is Workload.NATIVE
        cfg, entry = None, None
        if not native:
            cfg, entry = await asyncio.to_thread(c.exec_program, self.host, es.args, es.env, es.cwd)
        io = await self._work.call(
            f"open the stdio of exec {exec_id}",
            lambda: ProcessIO.open(
                stdio, container_id=container_id, namespace=c.namespace, pty=not native
            ),
        )
        if exec_id in c.execs or c.state is not State.RUNNING:  # changed while we waited
            await self._work.call(f"close the stdio of exec {exec_id}", io.close)
            raise FailedPrecondition(f"exec {exec_id}: container {container_id} changed meanwhile")
        e = ExecProcess(exec_id, container_id, es, stdio, io, cfg, entry, spec if native else b"")
        c.execs[exec_id] = e
        log.info("exec %s added (%s)", exec_id, es.args[0])
        self.events.task_exec_added(c, e)
        return e

    async def _start_exec(self, container_id: str, exec_id: str) -> int:
        c = self.get(container_id)
        e = self.get_exec(container_id, exec_id)
        e.state = next_state(e.state, Event.START)
        if c.state is not State.RUNNING:
            e.spawned.set()
            await self._exec_start_failed(e, START_FAILED_STATUS)
            why = "is paused (resume it first)" if c.state in LIVE else "has exited"
            raise FailedPrecondition(f"cannot start exec {exec_id}: the container {why}")
        return await asyncio.shield(self._run_exec(c, e))

    async def _run_exec(self, c: Container, e: ExecProcess) -> int:
        assert c.supervisor is not None
        try:
            setup = None
            if c.kind is Workload.WASM:
                setup = c.exec_setup(c.pid, e.spec.cwd, e.spec.terminal)
            io = e.io
            proc = await c.supervisor.start_exec(e, setup, io.child_fds(), io.attach_console)
        except Exception as err:
            e.spawned.set()
            await self._exec_start_failed(e, START_FAILED_STATUS)
            log.warning("exec %s: start failed: %s", e.id, err)
            raise
        e.process, e.pid = proc, proc.pid
        e.spawned.set()
        e.io.started()
        try:
            await proc.ready
        except ShimError as err:
            if e.kill_signal is None:
                await self._exec_start_failed(e, await proc.exited)
                log.warning("exec %s: start failed: %s", e.id, err)
                raise
        e.state = next_state(e.state, Event.STARTED)
        self.events.task_exec_started(c, e)
        log.info("exec %s started pid %d", e.id, e.pid)
        proc.exited.add_done_callback(lambda f: self._exec_exited(c, e, f.result()))
        return e.pid

    async def _exec_start_failed(self, e: ExecProcess, status: int) -> None:
        e.state = next_state(e.state, Event.START_FAILED)
        e.set_exited(status)
        await self._work.call(f"close the stdio of exec {e.id}", e.io.close)

    def _exec_exited(self, c: Container, e: ExecProcess, status: int) -> None:
        current_container.set(c.id)
        e.state = next_state(e.state, Event.EXIT)
        e.set_exited(status)
        log.info("exec %s exited with status %d", e.id, status)
        self.events.task_exec_exit(c, e)
        self._work.start(f"close the stdio of exec {e.id}", e.io.close)

    async def _kill_exec(self, c: Container, e: ExecProcess, sig: int) -> None:
        next_state(e.state, Event.KILL)  # NotFound once it has finished
        if c.state in (State.PAUSING, State.PAUSED, State.RESUMING):
            # A SIGKILL to a frozen cgroup's process is followed by a thaw of the whole
            # container (shim/task/supervisor.py), which must not happen behind Pause's back.
            raise FailedPrecondition(
                f"cannot signal exec {e.id}: container {c.id} is {c.state.value}; resume it "
                "first (or kill the container, which ends its exec processes too)"
            )
        if e.state is State.CREATED:
            self._exec_exited(c, e, 128 + sig)
            return
        if e.state is State.STARTING:
            await e.spawned.wait()
            next_state(e.state, Event.KILL)
            if e.process is not None and not e.process.ready.done():
                e.kill_signal = sig
        assert c.supervisor is not None and e.process is not None
        await c.supervisor.kill(e.process, sig, False)

    async def _delete_exec(self, c: Container, exec_id: str) -> ExitInfo:
        e = self.get_exec(c.id, exec_id)
        e.state = next_state(e.state, Event.DELETE)
        try:
            await self._work.call(f"close the stdio of exec {e.id}", e.io.close)
        finally:
            e.state = next_state(e.state, Event.DELETED)
            del c.execs[exec_id]
            e.exited.set()
        log.info("exec %s deleted", exec_id)
        return ExitInfo(e.pid, e.exit_status, e.exited_at_ns)

    # ------------------------------------------------------------------ Pause / Resume / Update

    async def pause(self, container_id: str) -> None:
        c = self.get(container_id)
        c.state = next_state(c.state, Event.PAUSE)
        # Shielded as Start is: the state must not stay PAUSING if containerd hangs up.
        await asyncio.shield(self._freeze(c, pause=True))

    async def resume(self, container_id: str) -> None:
        c = self.get(container_id)
        c.state = next_state(c.state, Event.RESUME)
        await asyncio.shield(self._freeze(c, pause=False))

    async def _freeze(self, c: Container, pause: bool) -> None:
        assert c.supervisor is not None
        between = State.PAUSING if pause else State.RESUMING
        try:
            await (c.supervisor.pause() if pause else c.supervisor.resume())
        except BaseException:
            if c.state is between:
                c.state = next_state(c.state, Event.PAUSE_FAILED if pause else Event.RESUME_FAILED)
            raise
        if c.state is not between:  # it exited meanwhile: nothing is paused or resumed
            return
        c.state = next_state(c.state, Event.PAUSED if pause else Event.RESUMED)
        if pause:
            self.events.task_paused(c)
        else:
            self.events.task_resumed(c)
        log.info("paused" if pause else "resumed")

    async def update(self, container_id: str, resources: Mapping[str, Any]) -> None:
        """New linux.resources (OCI JSON) for the container's cgroup."""
        c = self.get(container_id)
        started = next_state(c.state, Event.UPDATE) is not State.CREATED
        assert c.supervisor is not None
        await c.supervisor.update(resources, started)
        log.info("resources updated: %s", sorted(resources))

    # ------------------------------------------------------------------ queries

    def pids(self, container_id: str) -> list[int]:
        """The container's processes: its cgroup's members, else the init's pid; and every
        exec process that runs."""
        c = self.get(container_id)
        cgroup = c.cgroup
        found: list[int] = []
        if cgroup is not None and c.state in LIVE:
            found = cgroup.pids()
        if not found and c.pid and c.state in LIVE:
            found = [c.pid]
        execs = [e.pid for e in c.execs.values() if e.pid and e.state in LIVE]
        return found + [p for p in execs if p not in found]

    def cgroup_of(self, container_id: str) -> Cgroup:
        """The container's cgroup, for Stats; NotFound when it has none (CRI skips it)."""
        cgroup = self.get(container_id).cgroup
        if cgroup is None:
            raise NotFound(f"container {container_id} has no cgroup; no stats")
        return cgroup

    def close_io(self, container_id: str, exec_id: str, stdin: bool) -> None:
        io = self.get_exec(container_id, exec_id).io if exec_id else self.get(container_id).io
        if stdin and io is not None:
            io.close_stdin()

    def resize_pty(self, container_id: str, exec_id: str, width: int, height: int) -> None:
        """ResizePty: the terminal's new size (a process without one ignores it)."""
        io = self.get_exec(container_id, exec_id).io if exec_id else self.get(container_id).io
        if io is not None:
            io.resize(width, height)

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
        c = work.result()
        release = self._work.start(f"release abandoned {c.id}", c.release)
        release.add_done_callback(lambda _: self._check_idle())

    async def kill_everything(self) -> None:
        """Shutdown(now=true) or a signal: end every process and release every container."""
        for c in list(self.containers.values()):
            if c.state is State.STARTING or c.state in LIVE:
                with contextlib.suppress(ShimError):
                    await self.kill(c.id, "", signal.SIGKILL, True)
        for c in list(self.containers.values()):
            process: Process | None = c.process
            if process is not None and (c.state is State.STARTING or c.state in LIVE):
                try:
                    await asyncio.wait_for(asyncio.shield(process.exited), 5)
                except TimeoutError:
                    log.warning("container %s did not exit after SIGKILL", c.id)
            if c.supervisor is not None:
                with contextlib.suppress(ShimError):
                    await c.supervisor.delete()
            with contextlib.suppress(ShimError):
                release = asyncio.ensure_future(self._work.call(f"delete {c.id}", c.release))
                await within(release, DELETE_TIMEOUT, f"delete {c.id}")
        self.containers.clear()
