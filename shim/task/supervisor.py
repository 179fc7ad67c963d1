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

`NativeSupervisor` (shim/task/native.py): runc or crun creates the process and its cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from runtimes.base import CacheSettings, Entrypoint, RunConfig, Runtime
from shim import bundle as bundle_files
from shim.cgroups import Cgroup
from shim.confine.policy import PID_NEW
from shim.proc.child import ProcessSetup
from shim.proc.client import SpawnerClient
from shim.proc.process import Process
from shim.proc.reaper import Reaper
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

    async def start(self, stdio: tuple[int, int, int]) -> Process:
        """Create and start the process; returns once its pid is known. Raises ShimError."""
        ...

    async def kill(self, process: Process, sig: int, all_: bool) -> None:
        """Signal the process (`all_`: every process of the container). NotFound once it
        has exited."""
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
    ) -> None:
        self.host = host
        self.run_config = run_config
        self.entry = entry
        self._setup = setup
        self._cgroup = cgroup
        self._compile_fd: int | None = None

    @property
    def cgroup(self) -> Cgroup | None:
        return self._cgroup

    def held(self) -> dict[str, str]:
        if self._cgroup is not None and self._cgroup.owned:
            return {bundle_files.CGROUP: self._cgroup.path}
        return {}

    def request_compile(self) -> None:
        """Blocking (Create's thread): hand the program to the warm runtime's compile job.
        Without a warm runtime, or without a cache, the process compiles it itself."""
        cache = self.run_config.cache
        if cache is None:
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

    async def start(self, stdio: tuple[int, int, int]) -> Process:
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
        return process

    async def kill(self, process: Process, sig: int, all_: bool) -> None:
        await self.host.spawner.kill(process.pid, process.stand_in(sig))
        if all_ and self._cgroup is not None:
            await asyncio.to_thread(self._cgroup.kill_all, sig)

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
