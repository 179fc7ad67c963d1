"""The process of a container: one interface, a wasm kind and a native kind.

Create decides what a container runs (shim/task/workload.py) and makes its `Supervisor`;
from then on the task logic (shim/task/tasks.py) only calls the interface: `start` gives a
`Process` (shim/proc/process.py) whose pid is known at once and whose `ready` and `exited`
futures carry the rest; `kill` signals it; `delete` undoes what `start` made; `release`
undoes what Create acquired. Neither the task logic nor the container knows which kind it
holds.

`WasmSupervisor`: the container process is forked by the pod's spawner. At Create it makes
the container's cgroup (the shim is the OCI runtime here; a cgroupsPath that exists already
is refused, so the cgroup is the container's alone) and asks the warm runtime to
compile the program (shim/warm/compiling.py); the answer's connection goes to the process at
Start, which waits for it itself, so Kill reaches a process that waits for a compile or runs
a start function that never ends.

Pause and Resume freeze and thaw the container's cgroup (`Cgroup.freeze`, v1's freezer or
v2's cgroup.freeze). On cgroup v1 a frozen process does not act on SIGKILL until it is thawed,
so a SIGKILL sent to a paused container is followed by a thaw (runc does the same): a paused
container can always be killed. Other signals are not followed by a thaw (on v1 they wait for
Resume).

Update writes new memory, cpu and pids limits into the cgroup. The guest's linear-memory cap
is computed by the container process when it starts (what the memory limit leaves, see
shim/proc/child.py) and kept in its wasmtime Store, which nothing outside the guest's own
thread may change while the guest runs. So before Start an Update also changes the limit the
cap is computed from; once the guest runs, a higher (or no) memory limit is applied to the
cgroup while the cap stays what Start set, and a lower one is refused: the guest could then
grow into an OOM kill instead of seeing `memory.grow` fail.

`NativeSupervisor` (shim/task/native.py): runc or crun creates the process and its cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from runtimes.base import CacheSettings, Entrypoint, RunConfig, Runtime
from shim import bundle as bundle_files
from shim.cgroups import Cgroup, Resources, unapplied_changes
from shim.confine.policy import PID_NEW
from shim.errors import FailedPrecondition, InvalidArgument
from shim.proc.child import ProcessSetup
from shim.proc.client import SpawnerClient
from shim.proc.process import Process
from shim.proc.reaper import Reaper
from shim.task.execs import ExecProcess
from shim.task.workload import Workload
from shim.warm import compiling

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Host:
    """What a pod daemon offers every container it creates."""

    runtime: Runtime
    spawner: SpawnerClient
    reaper: Reaper
    containerd_address: str  # names the warm runtime to ask for compiles
    cache: CacheSettings | None
    grpc_address: str  # containerd's API, for images whose wasm is in the content store


class Supervisor(Protocol):
    kind: Workload

    @property
    def cgroup(self) -> Cgroup | None:
        """The container's cgroup, for stats, pids and OOM news (None: no cgroup)."""
        ...

    def held(self) -> dict[str, str]:
        """What this supervisor holds that `delete` must undo after a crash (bundle.py)."""
        ...

    async def start(self, stdio: tuple[int, int, int], console: Callable[[int], None]) -> Process:
        """Create and start the process; returns once its pid is known. `console` takes the
        master of a terminal that the runtime made (runc; the shim makes a wasm process's
        itself, shim/io/stdio.py). Raises ShimError."""
        ...

    async def start_exec(
        self,
        e: ExecProcess,
        setup: ProcessSetup | None,
        stdio: tuple[int, int, int],
        console: Callable[[int], None],
    ) -> Process:
        """Create and start exec process `e` in the running container (for wasm,
        `setup.join_pid` names its init). Raises ShimError."""
        ...

    async def kill(self, process: Process, sig: int, all_: bool) -> None:
        """Signal the process (`all_`: every process of the container). NotFound once it
        has exited."""
        ...

    async def pause(self) -> None:
        """Freeze every process of the container. Raises ShimError (FailedPrecondition when
        there is no freezer to use)."""
        ...

    async def resume(self) -> None:
        """Thaw what `pause` froze. Raises ShimError."""
        ...

    async def update(self, resources: Mapping[str, Any], started: bool) -> None:
        """Apply an Update's `linux.resources` (OCI JSON); `started`: the process exists.
        Raises InvalidArgument or FailedPrecondition for what cannot change, naming it."""
        ...

    async def delete(self) -> None:
        """Undo what `start` made outside the process itself. Idempotent."""
        ...

    def release(self) -> None:
        """Blocking: undo what Create acquired. Idempotent; never raises."""
        ...


class WasmSupervisor:
    """A wasm container: its process forked by the spawner (module docstring)."""

    kind = Workload.WASM

    def __init__(
        self,
        host: Host,
        run_config: RunConfig,
        entry: Entrypoint,
        setup: Callable[[], ProcessSetup],
        cgroup: Cgroup | None,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self.host = host
        self.run_config = run_config
        self.entry = entry
        self._setup = setup
        self._cgroup = cgroup
        self._compile_fd: int | None = None
        self._paused = False  # this supervisor froze the cgroup and has not thawed it
        # The linux.resources in force (Create's, then each Update's merged in): Update
        # compares against it (`unapplied_changes`).
        self._resources: dict[str, Any] = dict(resources or {})

    @property
    def cgroup(self) -> Cgroup | None:
        return self._cgroup

    def held(self) -> dict[str, str]:
        if self._cgroup is not None and self._cgroup.owned:
            return {bundle_files.CGROUP: self._cgroup.path}
        return {}

    def request_compile(self) -> None:
        """Blocking (Create's thread): hand the program to the warm runtime's compile job.
        Without a warm runtime, or without a cache, or for an HTTP server (whose code is
        compiled for another Engine: runtimes/wasmtime/engine.py), the process compiles it
        itself."""
        cache = self.run_config.cache
        if cache is None:
            return
        if self.run_config.http is not None:
            log.info(
                "an HTTP server's program is compiled with epoch interruption, by its own "
                "container process (through the node's cache), not by the warm runtime"
            )
            return
        fd = self.host.runtime.open_source(self.run_config, self.entry)
        try:
            self._compile_fd = compiling.request_compile(
                self.host.containerd_address, fd, self.entry.kind, self.entry.guest_path, cache
            )
        finally:
            os.close(fd)
        if self._compile_fd is None:
            log.info("no warm runtime answers; the container process compiles the program")

    async def start(self, stdio: tuple[int, int, int], console: Callable[[int], None]) -> Process:
        fds: tuple[int, ...] = stdio
        setup = self._setup()
        if self._compile_fd is not None:
            fds = (*stdio, self._compile_fd)
            setup = replace(setup, compile_channel=True)
        try:
            process = await self.host.spawner.spawn(self.run_config, self.entry, setup, fds)
        finally:
            self._close_compile_channel()
        conf = setup.confinement
        process.pid_namespace_init = conf is not None and conf.pid == PID_NEW
        process.serves_http = self.run_config.http is not None
        return process

    async def start_exec(
        self,
        e: ExecProcess,
        setup: ProcessSetup | None,
        stdio: tuple[int, int, int],
        console: Callable[[int], None],
    ) -> Process:
        """An exec process, forked by the same spawner as the init (so one supervision
        layer watches both); it joins the init rather than making a container."""
        assert e.run_config is not None and e.entry is not None and setup is not None
        return await self.host.spawner.spawn(e.run_config, e.entry, setup, stdio)

    async def kill(self, process: Process, sig: int, all_: bool) -> None:
        sent = process.stand_in(sig)
        try:
            await self.host.spawner.kill(process.pid, sent)
            if all_ and self._cgroup is not None:
                await asyncio.to_thread(self._cgroup.kill_all, sig)
        finally:
            if self._paused and sent == signal.SIGKILL:  # module docstring: v1 needs a thaw
                await self.resume()

    async def pause(self) -> None:
        cgroup = self._frozen_cgroup("pause")
        self._paused = True  # from the first write on: a Kill must thaw whatever froze
        try:
            await asyncio.to_thread(cgroup.freeze)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cgroup.thaw)
                self._paused = False
            raise

    async def resume(self) -> None:
        await asyncio.to_thread(self._frozen_cgroup("resume").thaw)
        self._paused = False

    def _frozen_cgroup(self, verb: str) -> Cgroup:
        if self._cgroup is None:
            raise FailedPrecondition(
                f"cannot {verb} a wasm container without a cgroup (the spec has no "
                "linux.cgroupsPath): pausing uses the cgroup freezer"
            )
        return self._cgroup

    async def update(self, resources: Mapping[str, Any], started: bool) -> None:
        res = Resources.from_spec(resources)
        refused = unapplied_changes(self._resources, resources)
        if refused:
            raise InvalidArgument(
                f"cannot update {', '.join(refused)} of a wasm container: the shim applies "
                "only memory (limit, swap, reservation), cpu (shares, quota, period) and "
                "pids (limit)"
            )
        if self._cgroup is None:
            raise FailedPrecondition(
                "cannot update the resources of a wasm container without a cgroup (the spec "
                "has no linux.cgroupsPath)"
            )
        old = self.run_config.memory_limit
        new = old
        if res.memory_limit is not None:  # -1: no limit
            new = res.memory_limit if res.memory_limit > 0 else None
        if started and new is not None and (old is None or new < old):
            raise FailedPrecondition(
                f"cannot lower the memory limit of a running wasm container (from "
                f"{'unlimited' if old is None else old} to {new} bytes): its guest's linear "
                "memory was capped at Start to fit the old limit, and wasmtime cannot change "
                "the cap of a running guest, so it would be OOM-killed instead of seeing "
                "memory.grow fail; recreate the container with the new limit"
            )
        await asyncio.to_thread(self._cgroup.update, res)
        self._resources = _merged(self._resources, resources)
        if not started:  # the process computes its cap from this limit at Start
            self.run_config = replace(self.run_config, memory_limit=new)
        elif new != old:
            log.info(
                "memory limit raised to %s; the guest's linear-memory cap stays what Start "
                "set for %s bytes",
                "unlimited" if new is None else f"{new} bytes",
                old,
            )

    async def delete(self) -> None:
        return None  # the process is gone; what Create made goes in release()

    def _close_compile_channel(self) -> None:
        fd, self._compile_fd = self._compile_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self) -> None:
        self._close_compile_channel()
        cgroup = self._cgroup
        if cgroup is not None:
            try:
                cgroup.remove()
                self._cgroup = None
            except Exception:
                log.exception("removing the cgroup %s", cgroup.path)


def _merged(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """linux.resources after an Update: each non-null entry of `update` replaces the same
    entry (one level into sections such as `memory`) of `current`."""
    out = dict(current)
    for section, value in update.items():
        if value is None:
            continue
        old = out.get(section)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[section] = {**old, **{k: v for k, v in value.items() if v is not None}}
        else:
            out[section] = value
    return out
