"""Native (non-wasm) containers through the node's OCI runtime: runc by default, or crun.

Inside a Kubernetes pod a RuntimeClass sends every container of the pod to this shim: the pause
sandbox and native sidecars too. Those run exactly as containerd's runc shim runs them: `runc
create` with the bundle (its own namespaces, cgroup, mounts, seccomp from config.json) and
`runc start`. The container's init is reparented to the daemon (a child subreaper, set in
shim/daemon.py), whose reaper (shim/proc/reaper.py) watches it and reports its exit status;
the runtime's commands run through the same reaper, so no exit is ever reaped twice.

Pause, Resume and Update are `runc pause`, `runc resume` and `runc update --resources FILE`,
as containerd's runc shim runs them (the file is the Update's linux.resources JSON, written
into the bundle and removed after). A SIGKILL to a paused container is followed by `runc
resume`: on cgroup v1 a frozen process acts on SIGKILL only once thawed.

A process with a terminal (the spec's `process.terminal`, an exec's `terminal`) gets it from
runc: `--console-socket`, and the master runc sends there is handed to the process's stdio
(shim/io/console_socket.py, shim/io/console.py).

Exec is `runc exec --detach --pid-file F --process P` with the exec's OCI process JSON, as
containerd's runc shim runs it: runc starts the process in the container and exits, the
process is reparented to the daemon, whose reaper watches it (its exit is the exec's), and
Kill signals it through its pidfd.

runc's own error messages go to a JSON log file in the bundle, not to the container's stderr,
and are read back into the error the RPC returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shim import bundle as bundle_files
from shim.cgroups import Cgroup
from shim.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ShimError,
)
from shim.io.console_socket import ConsoleSocket
from shim.proc.child import ProcessSetup
from shim.proc.process import Process
from shim.proc.reaper import NotInstalled, Reaper
from shim.task.execs import ExecProcess
from shim.task.workload import Workload

log = logging.getLogger(__name__)

DEFAULT_BINARY = "runc"
RUNC_ROOT = "/run/containerd/wasmtime/runc"
RUNC_LOG = "runc.log"
NATIVE_PID_FILE = "native.pid"
UPDATE_FILE = "update-resources.json"  # in the bundle, for the length of a `runc update`
COMMAND_TIMEOUT = 60.0

Console = Callable[[int], None]  # takes the master of the process's terminal


@dataclass(frozen=True, slots=True)
class NativeOptions:
    """Runtime options from containerd's config.toml (`[...runtimes.wasmtime.options]`)."""

    binary: str = DEFAULT_BINARY
    root: str = RUNC_ROOT


def options_from_toml(text: str) -> NativeOptions:
    """`BinaryName` (as runc's options spell it) or `native_runtime` picks runc or crun."""
    try:
        table: Mapping[str, Any] = tomllib.loads(text) if text.strip() else {}
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"runtime options are not valid TOML: {e}") from e
    binary = table.get("BinaryName") or table.get("native_runtime") or DEFAULT_BINARY
    root = table.get("Root") or RUNC_ROOT
    if not isinstance(binary, str) or not isinstance(root, str):
        raise InvalidArgument("runtime options BinaryName and Root must be strings")
    return NativeOptions(binary=binary, root=root)


def runtime_argv(options: NativeOptions, namespace: str, bundle: str) -> list[str]:
    """The runtime binary with the global flags every command of ours takes."""
    return [
        options.binary,
        "--root",
        os.path.join(options.root, namespace),
        "--log",
        os.path.join(bundle, RUNC_LOG),
        "--log-format",
        "json",
    ]


class Runc:
    """Drives the OCI runtime binary for one container, through the daemon's reaper."""

    def __init__(
        self, options: NativeOptions, namespace: str, container_id: str, bundle: str, reaper: Reaper
    ) -> None:
        self.options = options
        self.id = container_id
        self.bundle = bundle
        self.reaper = reaper
        self.root = os.path.join(options.root, namespace)
        self.base = runtime_argv(options, namespace, bundle)

    async def _run(
        self, *args: str, stdio: Sequence[int] | None = None, systemd_cgroup: bool = False
    ) -> None:
        """Run one runtime command to completion; errors carry its log's last error."""
        cmd = [*self.base, *(["--systemd-cgroup"] if systemd_cgroup else []), *args]
        try:
            status = await self.reaper.run(cmd, stdio=stdio, timeout=COMMAND_TIMEOUT)
        except NotInstalled:
            raise NotInstalled(
                f"the native runtime {self.options.binary!r} is not installed (needed for "
                "non-wasm containers such as the pod sandbox)"
            ) from None
        if status != 0:
            message = last_error(os.path.join(self.bundle, RUNC_LOG)) or f"exit {status}"
            cls = NotFound if "not exist" in message or "not running" in message else Internal
            raise cls(f"{self.options.binary} {args[0]}: {message}")

    async def _run_with_console(
        self, run: Callable[[list[str]], Awaitable[None]], console: Console | None
    ) -> None:
        """`run(extra_args)`; with `console`, a console socket is listened on, named to runc
        in the extra arguments, and the master runc sends there is given to `console`."""
        if console is None:
            await run([])
            return
        sock = ConsoleSocket()
        try:
            receiving = asyncio.ensure_future(sock.receive())
            master = -1
            try:
                await run(["--console-socket", sock.path])
                master = await asyncio.wait_for(receiving, COMMAND_TIMEOUT)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"{self.options.binary} sent no terminal to its console socket"
                ) from None
            finally:
                receiving.cancel()
                # Let the cancelled accept unregister its reader before the socket closes
                # (the descriptor number could otherwise be reused under a stale reader).
                await asyncio.wait([receiving])
                if master < 0:
                    _close_unclaimed(receiving)
            console(master)
        finally:
            sock.close()

    async def create_and_start(
        self, stdio: Sequence[int], systemd_cgroup: bool, console: Console | None = None
    ) -> tuple[int, asyncio.Future[int]]:
        """`create` then `start`; returns the container init's pid and its exit status to
        come, watched from the moment the pid is known (a program may end during `start`).
        `console`: the spec asks for a terminal, whose master it takes."""
        pid_file = os.path.join(self.bundle, NATIVE_PID_FILE)

        async def create(extra: list[str]) -> None:
            await self._run(
                "create",
                "--bundle",
                self.bundle,
                "--pid-file",
                pid_file,
                *extra,
                self.id,
                stdio=stdio,
                systemd_cgroup=systemd_cgroup,
            )

        await self._run_with_console(create, console)
        with open(pid_file) as f:
            pid = int(f.read().strip())
        exited = self.reaper.watch(pid)
        try:
            await self._run("start", self.id, systemd_cgroup=systemd_cgroup)
        except BaseException:
            await self.delete()
            raise
        return pid, exited

    async def exec(
        self, process: bytes, stdio: Sequence[int], console: Console | None
    ) -> tuple[int, asyncio.Future[int]]:
        """`exec --detach` of the OCI process JSON `process`; returns the exec process's pid
        and its exit status to come. `console`: the process has a terminal."""
        fd, spec_file = tempfile.mkstemp(prefix=".exec-", suffix=".json", dir=self.bundle)
        pid_file = spec_file[: -len(".json")] + ".pid"
        try:
            with os.fdopen(fd, "wb") as spec_out:
                spec_out.write(process)

            async def run(extra: list[str]) -> None:
                await self._run(
                    "exec",
                    "--detach",
                    "--pid-file",
                    pid_file,
                    "--process",
                    spec_file,
                    *extra,
                    self.id,
                    stdio=stdio,
                )

            try:
                await self._run_with_console(run, console)
            except BaseException:
                self._kill_made(pid_file)
                raise
            with open(pid_file) as pid_in:
                pid = int(pid_in.read().strip())
        finally:
            for path in (spec_file, pid_file):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        return pid, self.reaper.watch(pid)

    def _kill_made(self, pid_file: str) -> None:
        """An exec process runc made although the exec then failed (no terminal arrived, the
        container went away): SIGKILL through a pidfd, and watched so that the reaper
        collects it, rather than left running where no exec id reaches it."""
        try:
            with open(pid_file) as pid_in:
                pid = int(pid_in.read().strip())
        except (OSError, ValueError):
            return  # runc made nothing
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(pid)
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
        self.reaper.watch(pid)

    async def kill(self, sig: int, all_: bool) -> None:
        await self._run("kill", *(["--all"] if all_ else []), self.id, str(sig))

    async def pause(self) -> None:
        await self._run("pause", self.id)

    async def resume(self) -> None:
        await self._run("resume", self.id)

    async def update(self, resources: Mapping[str, Any]) -> None:
        """`update --resources FILE`: runc validates and applies (or refuses) every field."""
        path = os.path.join(self.bundle, UPDATE_FILE)
        data = json.dumps(resources).encode()
        await asyncio.to_thread(_write_file, path, data)
        try:
            await self._run("update", "--resources", path, self.id)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def delete(self) -> None:
        """`delete --force`: stops what is left and removes the runtime's state and cgroup."""
        if not os.path.exists(os.path.join(self.root, self.id)):
            return
        with contextlib.suppress(NotFound):
            await self._run("delete", "--force", self.id)


class NativeSupervisor:
    """A native container: runc (or crun) makes the process, its namespaces and cgroup."""

    kind = Workload.NATIVE

    def __init__(self, runc: Runc, cgroups_path: str, terminal: bool = False) -> None:
        self.runc = runc
        self.cgroups_path = cgroups_path
        self.terminal = terminal  # the spec's process.terminal: runc makes one
        self._init: Process | None = None
        self._cgroup: Cgroup | None = None
        self._started = False
        self._paused = False  # `runc pause` succeeded and no resume has followed

    @property
    def cgroup(self) -> Cgroup | None:
        return self._cgroup

    def held(self) -> dict[str, str]:
        """Always the runtime's state: `runc delete --force` of a container that was never
        created is a harmless error, and a crash during `runc create` must not leak one."""
        return {bundle_files.NATIVE: f"{self.runc.options.binary} {self.runc.options.root}"}

    async def start(self, stdio: tuple[int, int, int], console: Console) -> Process:
        systemd = self.cgroups_path.count(":") == 2  # "slice:prefix:name"
        self._started = True  # from here on there may be runtime state to delete
        pid, exited = await self.runc.create_and_start(
            stdio, systemd, console if self.terminal else None
        )
        proc = self._init = _process(pid, exited)
        if self.cgroups_path:
            try:
                self._cgroup = await asyncio.to_thread(Cgroup.load, self.cgroups_path, owned=False)
            except ShimError as e:
                log.warning("no stats for %s: %s", self.runc.id, e)
        return proc

    async def kill(self, process: Process, sig: int, all_: bool) -> None:
        if process is not self._init:  # an exec process: runc knows only the container
            self.runc.reaper.signal(process.pid, sig)
            return
        try:
            await self.runc.kill(sig, all_)
        finally:
            if self._paused and sig == signal.SIGKILL:  # module docstring
                with contextlib.suppress(ShimError):  # runc may have thawed it already
                    await self.runc.resume()
                self._paused = False

    async def pause(self) -> None:
        await self.runc.pause()
        self._paused = True

    async def resume(self) -> None:
        await self.runc.resume()
        self._paused = False

    async def start_exec(
        self,
        e: ExecProcess,
        setup: ProcessSetup | None,
        stdio: tuple[int, int, int],
        console: Console,
    ) -> Process:
        """`runc exec` of the exec's process spec (module docstring)."""
        pid, exited = await self.runc.exec(
            e.process_json, stdio, console if e.spec.terminal else None
        )
        return _process(pid, exited)

    async def update(self, resources: Mapping[str, Any], started: bool) -> None:
        if not started:
            raise FailedPrecondition(
                "cannot update the resources of a native container before it starts (runc "
                "creates it at Start; the spec's resources apply then)"
            )
        await self.runc.update(resources)

    async def delete(self) -> None:
        if self._started:
            await self.runc.delete()

    def release(self) -> None:
        return None  # runc made the cgroup and removes it at delete


def _close_unclaimed(receiving: asyncio.Future[int]) -> None:
    """A master that arrived although the command failed is closed, not leaked."""
    if receiving.done() and not receiving.cancelled() and receiving.exception() is None:
        os.close(receiving.result())


def _process(pid: int, exited: asyncio.Future[int]) -> Process:
    """A Process for a pid runc started: ready at once, its exit from the reaper."""
    proc = Process(pid=pid)
    proc.set_ready()
    exited.add_done_callback(lambda f: proc.set_exited(f.result()))
    return proc


def last_error(log_path: str) -> str:
    """The last error-level message of a runc/crun JSON log (they log one object per line)."""
    message = ""
    with contextlib.suppress(OSError), open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                message = str(entry.get("msg", ""))
    return message


def _write_file(path: str, data: bytes) -> None:
    """Write a file of the shim's own in the bundle (replacing one a crash left)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    with os.fdopen(os.open(path, flags, 0o600), "wb") as f:
        f.write(data)
