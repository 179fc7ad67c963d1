"""One container: what it owns on the host, and how that is acquired and released.

A container owns its rootfs mount, its stdio and its `Supervisor` (shim/task/supervisor.py:
the cgroup and the process, wasm or native). All acquisition happens in `Container.prepare`
(called by Create) and all release in `Container.release` (called by Delete, and on any
Create failure), so nothing is leaked by a failure half-way: release undoes exactly what was
done, in reverse, and is idempotent. What is held is also written to the bundle's held
record (shim/bundle.py) as it is acquired, for `delete` after a crash.
The task state (shim/task/states.py) lives here and is changed only by shim/task/tasks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace

from runtimes.base import Entrypoint, Preopen, RunConfig
from runtimes.wasmtime.http import switch as http_switch
from shim import bundle as bundle_files
from shim.cgroups import Cgroup
from shim.confine.policy import Confinement, cgroup_dirs, confinement
from shim.errors import FailedPrecondition, InvalidArgument, NotFound
from shim.io.stdio import ProcessIO, StdioConfig
from shim.oci import mounts, namespaces
from shim.oci.spec import Spec, load
from shim.oci.spec import getenv as spec_getenv
from shim.proc.child import ProcessSetup
from shim.proc.process import Process
from shim.task import workload
from shim.task.execs import ExecProcess
from shim.task.native import NATIVE_PID_FILE, NativeOptions, NativeSupervisor, Runc
from shim.task.states import State
from shim.task.supervisor import Host, Supervisor, WasmSupervisor
from shim.task.workload import Workload

log = logging.getLogger(__name__)

ARTIFACT_DIR = "wasm-artifact"  # in the bundle: the program layer of a wasm-layer image


@dataclass(frozen=True, slots=True)
class CreateConfig:
    """Create's request as plain values (the wire type stays in service.py)."""

    id: str
    bundle: str
    rootfs: tuple[mounts.MountRequest, ...]
    stdio: StdioConfig
    namespace: str
    native: NativeOptions = field(default_factory=NativeOptions)


@dataclass(eq=False)
class Container:
    id: str
    bundle: str
    namespace: str
    spec: Spec
    stdio: StdioConfig
    rootfs: str = ""
    rootfs_mounts: tuple[mounts.MountRequest, ...] = ()
    mounted: bool = False
    io: ProcessIO | None = None
    supervisor: Supervisor | None = None
    entry: Entrypoint | None = None  # wasm only: the program
    run_config: RunConfig | None = None
    confinement: Confinement | None = None  # wasm only: see shim/confine/
    joined: tuple[tuple[str, str], ...] = ()  # wasm only: namespaces joined by path
    state: State = State.CREATED
    process: Process | None = None
    pid: int = 0
    exit_status: int = 0
    exited_at_ns: int = 0
    kill_signal: int | None = None  # a Kill reached the process before it was ready
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    spawned: asyncio.Event = field(default_factory=asyncio.Event)  # Start has a process, or failed
    execs: dict[str, ExecProcess] = field(default_factory=dict)  # by exec id (wasm only)

    @property
    def kind(self) -> Workload:
        return self.supervisor.kind if self.supervisor is not None else Workload.WASM

    @property
    def cgroup(self) -> Cgroup | None:
        return self.supervisor.cgroup if self.supervisor is not None else None

    # ------------------------------------------------------------------ acquisition

    @classmethod
    def prepare(cls, cfg: CreateConfig, host: Host) -> Container:
        """Do everything Create needs, blocking (run it in a thread). Undone on failure."""
        spec = load(cfg.bundle)
        if spec.process.terminal != cfg.stdio.terminal:
            raise InvalidArgument(
                f"the spec's process.terminal is {spec.process.terminal} but Create's "
                f"terminal is {cfg.stdio.terminal}"
            )
        namespaces.check_paths(spec.namespaces)  # before anything opens them (never blocks)
        c = cls(id=cfg.id, bundle=cfg.bundle, namespace=cfg.namespace, spec=spec, stdio=cfg.stdio)
        try:
            c._mount_rootfs(cfg.rootfs)
            c.record()
            c.run_config = c._run_config(host)
            kind, c.entry = workload.choose(
                spec.annotations, spec.process.args[0], lambda: c._resolve(host)
            )
            if kind is Workload.NATIVE:
                if spec.cgroups_path:  # runc would join an existing one (shim/cgroups/cgroup.py)
                    Cgroup.require_absent(spec.cgroups_path)
                runc = Runc(cfg.native, cfg.namespace, cfg.id, cfg.bundle, host.reaper)
                c.supervisor = NativeSupervisor(runc, spec.cgroups_path, spec.process.terminal)
                c.record()
            else:
                assert c.entry is not None
                c.run_config = replace(  # env: the spec's, or a wasm artifact's (_resolve)
                    c.run_config, http=http_switch.from_spec(c.run_config.env, spec.annotations)
                )
                cgroup = (
                    Cgroup.create(spec.cgroups_path, spec.resources) if spec.cgroups_path else None
                )
                wasm = WasmSupervisor(
                    host, c.run_config, c.entry, c.process_setup, cgroup, spec.resources
                )
                c.supervisor = wasm  # holds the cgroup: released on any failure below
                c.record()
                c.confine(cgroup)
                wasm.request_compile()
            native = c.kind is Workload.NATIVE  # runc makes a native one's terminal
            c.io = ProcessIO.open(
                cfg.stdio, container_id=cfg.id, namespace=cfg.namespace, pty=not native
            )
        except BaseException:
            c.release()
            raise
        return c

    def record(self) -> None:
        """Write the bundle's held record: what `delete` must undo if the daemon dies now."""
        held = dict(self.supervisor.held()) if self.supervisor is not None else {}
        if self.mounted:
            held[bundle_files.ROOTFS] = self.rootfs
        if self.pid:
            held[bundle_files.PID] = f"{self.pid} {bundle_files.start_time(self.pid)}"
        bundle_files.write_held(self.bundle, held)

    def _resolve(self, host: Host) -> Entrypoint:
        """The entrypoint in the rootfs; when the rootfs has none, the wasm layer of a
        wasm-layer image (runwasi's layout, a CNCF artifact), read from containerd's content
        store (shim/oci/content.py; args[0] picks among several layers).

        The rootfs comes first so that ordinary images cost no API round trip; a wasm-layer
        image unpacks to an empty rootfs, so the two never compete. A failure to read the
        image is reported as such, never hidden behind "not found"."""
        assert self.run_config is not None
        runtime = host.runtime
        path_env = self.spec.process.getenv("PATH")
        try:
            return runtime.resolve(self.run_config, path_env)
        except NotFound:
            if not host.grpc_address:
                raise
            from shim.oci.content import load_wasm_from_content_store

            art_dir = os.path.join(self.bundle, ARTIFACT_DIR)
            art = load_wasm_from_content_store(
                host.grpc_address,
                self.namespace,
                self.id,
                art_dir,
                arg0=self.spec.process.args[0],
            )
            if art is None:
                raise
        log.info(
            "entrypoint is layer %d (%s) of %s (content store)", art.layer, art.digest, art.image
        )
        func = self.spec.process.args[0].partition("#")[2]  # keep a `#func` suffix
        name = "/" + os.path.basename(art.path)
        probe = replace(
            self.run_config,
            rootfs=art_dir,
            args=(f"{name}#{func}" if func else name,),
            cwd="/",
        )
        found = runtime.resolve(probe, None)
        self.run_config = replace(
            self.run_config,
            artifact_dir=art_dir,
            env=self.run_config.env or art.env,
        )
        return replace(found, guest_path=self.spec.process.args[0].split("#", 1)[0])

    def _mount_rootfs(self, requests: tuple[mounts.MountRequest, ...]) -> None:
        self.rootfs_mounts = requests
        if requests:
            self.rootfs = os.path.join(self.bundle, "rootfs")
            os.makedirs(self.rootfs, exist_ok=True)
            mounts.mount_rootfs(requests, self.rootfs)
            self.mounted = True
        else:  # `ctr run --rootfs DIR`: the spec names a directory that is already there
            self.rootfs = os.path.join(self.bundle, self.spec.root_path)
        if not os.path.isdir(self.rootfs):
            raise FailedPrecondition(f"rootfs {self.rootfs} is not a directory")

    def confine(self, cgroup: Cgroup | None) -> None:
        """Decide the container process's confinement (shim/confine/policy.py): a spec that
        asks for what cannot be honoured fails Create here, naming the entry."""
        dirs: tuple[tuple[str, str], ...] = ()
        if cgroup is not None:
            dirs = cgroup_dirs(cgroup.join_files(), cgroup.layout.version.value == "v2")
        self.confinement, self.joined = confinement(self.spec, self.rootfs, dirs)

    def _run_config(self, host: Host) -> RunConfig:
        """The engine's view. The process pivots into its rootfs first, so the one preopen is
        `/` (the kernel applies `root.readonly` and every mount's options below it)."""
        preopens = [Preopen(host="/", guest="/", readonly=False)]
        proc = self.spec.process
        return RunConfig(
            container_id=self.id,
            rootfs=self.rootfs,
            args=proc.args,
            env=proc.env,
            cwd=proc.cwd,
            preopens=tuple(preopens),
            memory_limit=self.spec.memory_limit,
            cache=host.cache,
        )

    def process_setup(self) -> ProcessSetup:
        """What the forked child does before the engine runs (see shim/proc/child.py)."""
        cgroup = self.cgroup
        return ProcessSetup(
            cgroup_files=cgroup.join_files() if cgroup else (),
            namespaces=self.joined,
            hostname=self.spec.hostname,
            memory_usage_file=(cgroup.memory_usage_file() or "") if cgroup else "",
            confinement=self.confinement,
            terminal=self.stdio.terminal,
        )

    def exec_program(
        self, host: Host, args: tuple[str, ...], env: tuple[str, ...], cwd: str
    ) -> tuple[RunConfig, Entrypoint]:
        """Blocking: an exec process's engine view and program, its args[0] resolved in the
        rootfs on the host side as the entrypoint is (a wasm artifact's layer is not
        searched: it holds only the entrypoint). Raises NotFound or FailedPrecondition."""
        if self.run_config is None or self.confinement is None:
            raise FailedPrecondition(f"container {self.id} runs no wasm program to exec beside")
        cfg = replace(self.run_config, args=args, env=env, cwd=cwd, artifact_dir=None, http=None)
        return cfg, host.runtime.resolve(cfg, spec_getenv(env, "PATH"))

    def exec_setup(self, init_pid: int, cwd: str, terminal: bool) -> ProcessSetup:
        """What an exec process does before its engine runs: the init's cgroup, and the
        init's namespaces, root and confinement in place of new ones (shim/proc/child.py);
        the spawner forks it into the init's PID namespace."""
        assert self.confinement is not None
        cgroup = self.cgroup
        return ProcessSetup(
            cgroup_files=cgroup.join_files() if cgroup else (),
            memory_usage_file=(cgroup.memory_usage_file() or "") if cgroup else "",
            confinement=replace(self.confinement, pid=f"/proc/{init_pid}/ns/pid", cwd=cwd),
            join_pid=init_pid,
            terminal=terminal,
        )

    # ------------------------------------------------------------------ exit and release

    def set_exited(self, status: int) -> None:
        """Record how the task ended and wake its Waits (the state is tasks.py's to set)."""
        self.exit_status = status
        self.exited_at_ns = time.time_ns()
        self.exited.set()

    def release(self) -> None:
        """Release what Create acquired (the supervisor's part after `delete()`); safe to
        call more than once. The held record goes last, once nothing is held."""
        if self.supervisor is not None:
            self.supervisor.release()
        for e in self.execs.values():  # exec processes never deleted on their own
            try:
                e.io.close()
            except Exception:
                log.exception("closing stdio of exec %s in %s", e.id, self.id)
        if self.io is not None:
            try:
                self.io.close()
            except Exception:
                log.exception("closing stdio of %s", self.id)
        if self.mounted:
            mounts.unmount_all(self.rootfs)
            self.mounted = False
        shutil.rmtree(os.path.join(self.bundle, ARTIFACT_DIR), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.bundle, NATIVE_PID_FILE))
        bundle_files.write_held(self.bundle, {})
