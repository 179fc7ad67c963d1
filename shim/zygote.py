"""The warm fork server that creates container processes.

Why a zygote: a container process must be its own OS process (per-container kill, cgroups and
memory accounting; a crashing guest cannot take the shim down), but starting a fresh Python and
importing wasmtime costs tens of milliseconds per container. The daemon forks this process once,
before its event loop or any thread exists; it imports the engine (`Runtime.warm()`) and then
forks a child per container, which pays nothing for interpreter start or imports.

Why not fork from the daemon itself: the daemon runs asyncio and threads (stdio copiers), and
fork() of a threaded process may leave locks held in the child. The zygote stays
single-threaded: one selector loop over its socket, the children's ready pipes and their pidfds.

Protocol (SOCK_SEQPACKET socketpair, one JSON object per message, stdio fds by SCM_RIGHTS):
  daemon -> zygote  {"op": "spawn", "req": n, "config": {...}, "entry": {...}, "setup": {...}}
                    {"op": "kill", "req": n, "pid": p, "signal": s}
  zygote -> daemon  {"req": n, "pid": p} | {"req": n, "error": msg, "kind": "FailedPrecondition"}
                    {"req": n, "ok": true}
                    {"exit": p, "status": s}       (always after the spawn reply for p)

The child, between fork and the guest: new session, die-with-parent, join the cgroup, join the
pod's namespaces, stdio onto 0/1/2, close every other fd, default signal dispositions, chdir,
drop to the spec's uid/gid, then `Runtime.prepare()`. Only when prepare succeeded does it write
"R" on its ready pipe, so Start fails with the engine's reason (bad module, missing export) and
never reports a pid for a process that cannot run.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtimes.base import Entrypoint, EntrypointKind, Preopen, RunConfig, Runtime
from shim import errors

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
SO_SNDBUFFORCE = 32
SOCKET_BUFFER = 4 << 20  # a datagram must fit: spawn requests carry the whole process env
MAX_REQUEST = SOCKET_BUFFER  # what the zygote reads at most
MAX_REPLY = 64 << 10  # what the daemon reads at most (errors are cut to MAX_ERROR)
MAX_ERROR = 16 << 10  # an error text is cut to this: a datagram has a size limit
_libc = ctypes.CDLL(None, use_errno=True)

# Namespaces a container process may join by path (CRI pods); others are not for wasm.
JOINABLE_NAMESPACES = {"network": "net", "ipc": "ipc", "uts": "uts"}


@dataclass(frozen=True, slots=True)
class ProcessSetup:
    """What the forked child does to itself before the engine runs."""

    cgroup_files: tuple[str, ...] = ()  # cgroup.procs files to write our pid into
    namespaces: tuple[tuple[str, str], ...] = ()  # (spec type, path) to setns into
    host_cwd: str = "/"  # the directory to chdir to, on the host
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    hostname: str = ""
    memory_usage_file: str = ""  # the cgroup's memory charge, for the linear-memory cap


@dataclass(slots=True)
class _Pending:
    req: int
    pid: int
    ready_fd: int
    pidfd: int
    data: bytearray = field(default_factory=bytearray)


def exit_code_from_wait_status(status: int) -> int:
    """waitpid status -> the number containerd reports: the exit code, or 128+signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


# --------------------------------------------------------------------------- serialisation


def _encode_spawn(cfg: RunConfig, entry: Entrypoint, setup: ProcessSetup) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(cfg),
        "entry": {**dataclasses.asdict(entry), "kind": entry.kind.value},
        "setup": dataclasses.asdict(setup),
    }


def _decode_spawn(msg: dict[str, Any]) -> tuple[RunConfig, Entrypoint, ProcessSetup]:
    c = dict(msg["config"])
    c["args"] = tuple(c["args"])
    c["env"] = tuple(c["env"])
    c["preopens"] = tuple(Preopen(**p) for p in c["preopens"])
    e = dict(msg["entry"])
    e["kind"] = EntrypointKind(e["kind"])
    s = dict(msg["setup"])
    s["cgroup_files"] = tuple(s["cgroup_files"])
    s["namespaces"] = tuple(tuple(ns) for ns in s["namespaces"])
    s["additional_gids"] = tuple(s["additional_gids"])
    return RunConfig(**c), Entrypoint(**e), ProcessSetup(**s)


# --------------------------------------------------------------------------- the child


def memory_headroom(limit: int, setup: ProcessSetup) -> int:
    """How large the guest's linear memory may grow: the cgroup limit, less what the process
    is already charged once the engine is ready (compiled code, the interpreter's pages it
    has touched since fork), less a margin for what running costs besides linear memory.
    Without this the guest's memory alone could reach the limit and the kernel would
    OOM-kill the process (status 137) instead of memory.grow failing inside the guest."""
    with open(setup.memory_usage_file) as f:
        used = int(f.read().strip() or 0)
    margin = max(4 << 20, limit // 16)
    return max(0, limit - used - margin)


def _child(
    runtime: Runtime,
    cfg: RunConfig,
    entry: Entrypoint,
    setup: ProcessSetup,
    stdio: Sequence[int],
    ready_w: int,
    zygote_pid: int,
) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        os.setsid()
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != zygote_pid:
            os._exit(137)
        pid = str(os.getpid())
        for path in setup.cgroup_files:
            with open(path, "w") as f:
                f.write(pid)
        for ns_type, path in setup.namespaces:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, 0) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {ns_type} {path}: {os.strerror(err)}")
            finally:
                os.close(fd)
        if setup.hostname and any(t == "uts" for t, _ in setup.namespaces):
            socket.sethostname(setup.hostname)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target, inheritable=True)
        ready_w = os.dup2(ready_w, 3, inheritable=False)
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                with contextlib.suppress(OSError, ValueError, RuntimeError):
                    signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.chdir(setup.host_cwd)
        if setup.gid or setup.additional_gids:
            os.setgroups(list(setup.additional_gids))
        if setup.gid:
            os.setgid(setup.gid)
        if setup.uid:
            os.setuid(setup.uid)
        prepared = runtime.prepare(cfg, entry)
        if cfg.memory_limit and setup.memory_usage_file:
            runtime.limit_memory(prepared, memory_headroom(cfg.memory_limit, setup))
    except BaseException as e:  # every failure must reach the daemon, then exit
        kind = type(e).__name__ if isinstance(e, errors.ShimError) else "FailedPrecondition"
        text = str(e) if isinstance(e, errors.ShimError) else f"{type(e).__name__}: {e}"
        text = text if len(text) <= MAX_ERROR else text[:MAX_ERROR] + " [...]"
        with contextlib.suppress(BaseException):
            os.write(ready_w, b"E" + json.dumps({"kind": kind, "message": text}).encode())
        os._exit(code)
    try:
        os.write(ready_w, b"R")
        os.close(ready_w)
        code = runtime.run(prepared)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            os.write(2, f"shim: {type(e).__name__}: {e}\n".encode())
        code = 134
    os._exit(code & 0xFF)


# --------------------------------------------------------------------------- the zygote


class _Zygote:
    """The fork server's loop (runs in the zygote process)."""

    def __init__(self, sock: socket.socket, runtime: Runtime) -> None:
        self.sock = sock
        self.runtime = runtime
        self.sel = selectors.DefaultSelector()
        self.pending: dict[int, _Pending] = {}  # by ready fd
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.pidfds: dict[int, int] = {}  # pid -> pidfd

    def send(self, msg: dict[str, Any]) -> None:
        """Send one message; an error text too long for a datagram is cut, and a failed send
        is logged, never raised: the loop must outlive any one request."""
        if len(msg.get("error", "")) > MAX_ERROR:
            msg["error"] = msg["error"][:MAX_ERROR] + " [...]"
        try:
            self.sock.send(json.dumps(msg).encode())
        except OSError as e:
            log.error("zygote: cannot answer the daemon (%s): %s", e, str(msg)[:200])

    def serve(self) -> None:
        self.sel.register(self.sock, selectors.EVENT_READ, "sock")
        while True:
            for key, _ in self.sel.select():
                tag = key.data
                if tag == "sock":
                    if not self._on_request():
                        return
                elif tag == "ready":
                    self._on_ready(key.fd)
                else:
                    self._on_exit(key.fd)

    def _on_request(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_REQUEST, 3)
        except ConnectionError:
            return False
        if not data:
            return False
        msg: Any = None
        try:
            msg = json.loads(data)
            if msg["op"] == "spawn":
                self._spawn(msg, fds)
                return True
            for fd in fds:
                os.close(fd)
            if msg["op"] == "kill":
                self._kill(msg)
        except Exception as e:  # one bad request must not end the zygote (and its children)
            log.exception("zygote: request failed")
            req = msg.get("req") if isinstance(msg, dict) else None
            self.send({"req": req, "error": f"fork server: {e}", "kind": "Internal"})
        return True

    def _spawn(self, msg: dict[str, Any], fds: list[int]) -> None:
        req = msg["req"]
        try:
            cfg, entry, setup = _decode_spawn(msg)
        except (KeyError, TypeError, ValueError) as e:
            for fd in fds:
                os.close(fd)
            self.send({"req": req, "error": f"bad spawn request: {e}", "kind": "Internal"})
            return
        try:
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            for fd in fds:
                os.close(fd)
            self.send({"req": req, "error": f"cannot start a process: {e}", "kind": "Internal"})
            return
        try:
            pid = os.fork()
        except OSError as e:
            for fd in (*fds, ready_r, ready_w):
                os.close(fd)
            self.send({"req": req, "error": f"cannot start a process: {e}", "kind": "Internal"})
            return
        if pid == 0:
            _child(self.runtime, cfg, entry, setup, fds, ready_w, os.getppid())
        os.close(ready_w)
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:  # no way to watch it: end it rather than lose its exit
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(ready_r)
            self.send({"req": req, "error": f"cannot watch the process: {e}", "kind": "Internal"})
            return
        self.pending[ready_r] = _Pending(req=req, pid=pid, ready_fd=ready_r, pidfd=pidfd)
        self.children[pidfd] = pid
        self.pidfds[pid] = pidfd
        self.sel.register(ready_r, selectors.EVENT_READ, "ready")
        self.sel.register(pidfd, selectors.EVENT_READ, "exit")

    def _on_ready(self, fd: int) -> None:
        p = self.pending[fd]
        chunk = os.read(fd, 65536)
        if chunk:
            p.data += chunk
            if p.data[:1] == b"R":
                self._finish_ready(p)
            return
        self._finish_ready(p)

    def _finish_ready(self, p: _Pending) -> None:
        """Answer the spawn request: the pid when the child said R, else its error."""
        self.sel.unregister(p.ready_fd)
        os.close(p.ready_fd)
        del self.pending[p.ready_fd]
        if p.data[:1] == b"R":
            self.send({"req": p.req, "pid": p.pid})
            return
        try:
            err = json.loads(bytes(p.data[1:]))
            kind, message = err["kind"], err["message"]
        except (ValueError, KeyError, TypeError):
            kind, message = "FailedPrecondition", "the container process died during setup"
        self.send({"req": p.req, "error": message, "kind": kind, "pid": p.pid})

    def _on_exit(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        for p in list(self.pending.values()):
            if p.pid == pid:  # its ready pipe holds all it will ever say: answer first
                with contextlib.suppress(OSError):
                    while chunk := os.read(p.ready_fd, 65536):
                        p.data += chunk
                self._finish_ready(p)
        self.sel.unregister(pidfd)
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
        del self.pidfds[pid]
        self.send({"exit": pid, "status": exit_code_from_wait_status(status)})

    def _kill(self, msg: dict[str, Any]) -> None:
        pidfd = self.pidfds.get(msg["pid"])
        if pidfd is None:
            self.send({"req": msg["req"], "error": "process already finished", "kind": "NotFound"})
            return
        try:
            signal.pidfd_send_signal(pidfd, msg["signal"])
        except ProcessLookupError:
            self.send({"req": msg["req"], "error": "process already finished", "kind": "NotFound"})
            return
        except OSError as e:
            self.send({"req": msg["req"], "error": f"kill: {e.strerror}", "kind": "Internal"})
            return
        self.send({"req": msg["req"], "ok": True})


def fork_zygote(runtime: Runtime, close: Sequence[int] = ()) -> tuple[int, socket.socket]:
    """Fork the zygote. Call before any thread or event loop exists in this process.

    `close`: fds of the daemon the zygote must not hold (the listening socket)."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (parent_sock, child_sock):  # room for a spawn request with a large env
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
        except OSError:  # without CAP_NET_ADMIN: as much as net.core.wmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    daemon_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            parent_sock.close()
            for fd in close:
                os.close(fd)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != daemon_pid:
                os._exit(0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            runtime.warm()
            _Zygote(child_sock, runtime).serve()
        except BaseException:
            log.exception("zygote failed")
            code = 1
        os._exit(code)
    child_sock.close()
    return pid, parent_sock


# --------------------------------------------------------------------------- daemon side


def _reap_orphan(pid: int, timeout: float = 2.0) -> int:
    """The exit status of a container process whose zygote died (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not (yet) reparented to us, or reaped elsewhere
            done, status = 0, 0
        if done:
            return exit_code_from_wait_status(status)
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return 128 + signal.SIGKILL
        time.sleep(0.02)


class ZygoteClient:
    """The daemon's asyncio handle on the zygote: spawn, kill, and exit notifications."""

    def __init__(self, pid: int, sock: socket.socket, on_exit: Callable[[int, int], None]) -> None:
        self.pid = pid
        self.sock = sock
        self.on_exit = on_exit
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        # pid -> exit status (None: still running) for processes spawned but not yet
        # claimed: the exit of a guest that ends at once can arrive before spawn()'s caller
        # has resumed and recorded the pid, and must not be delivered before that.
        self._unclaimed: dict[int, int | None] = {}
        self._failed: set[int] = set()  # spawned, but setup failed: their exits are no news
        self._live: set[int] = set()  # running container processes, for when the zygote dies
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        import asyncio  # not at module level: the zygote imports this module too

        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_REPLY)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            msg = json.loads(data)
            if "exit" in msg:
                self._exit(msg["exit"], msg["status"])
                continue
            if "pid" in msg:
                if "error" in msg:
                    self._failed.add(msg["pid"])
                else:
                    self._unclaimed[msg["pid"]] = None
                    self._live.add(msg["pid"])
            fut = self._waiting.pop(msg["req"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _exit(self, pid: int, status: int) -> None:
        self._live.discard(pid)
        if pid in self._failed:
            self._failed.discard(pid)
        elif pid in self._unclaimed:
            self._unclaimed[pid] = status
        else:
            self.on_exit(pid, status)

    def claim(self, pid: int) -> None:
        """The caller of spawn() has recorded `pid`: deliver its exit from now on (at once,
        if it has already happened)."""
        status = self._unclaimed.pop(pid, None)
        if status is not None:
            self.on_exit(pid, status)

    def _lost(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.sock.fileno())
        log.error("the zygote went away; no new container can start in this shim")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(errors.Unavailable("the shim's fork server is gone"))
        self._waiting.clear()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)
        # Its children die with it (PDEATHSIG) and are reparented to us, the subreaper:
        # reap them and report their exits, or their tasks would stay RUNNING for ever.
        for pid in sorted(self._live):
            self._exit(pid, _reap_orphan(pid))

    async def _call(self, msg: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        assert self._loop is not None

        self._next += 1
        msg["req"] = self._next
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._waiting[self._next] = fut
        data = json.dumps(msg).encode()
        req = self._next
        while True:
            try:
                if fds:
                    socket.send_fds(self.sock, [data], list(fds))
                else:
                    self.sock.send(data)
                break
            except BlockingIOError:  # the zygote is busy and its queue full: wait, not fail
                writable = self._loop.create_future()
                self._loop.add_writer(self.sock.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    self._loop.remove_writer(self.sock.fileno())
            except OSError as e:
                self._waiting.pop(req, None)
                if e.errno == errno.EMSGSIZE:
                    raise errors.InvalidArgument(
                        f"the container's configuration is too large ({len(data)} bytes) for "
                        "the shim's fork server"
                    ) from None
                raise errors.Unavailable(f"the shim's fork server is gone: {e}") from None
        reply = await fut
        if "error" in reply:
            cls = getattr(errors, reply.get("kind", ""), errors.Internal)
            if not (isinstance(cls, type) and issubclass(cls, errors.ShimError)):
                cls = errors.Internal
            raise cls(reply["error"])
        return reply

    async def spawn(
        self, cfg: RunConfig, entry: Entrypoint, setup: ProcessSetup, stdio: Sequence[int]
    ) -> int:
        """Fork a container process; returns its pid once the engine is ready to run it."""
        reply = await self._call({"op": "spawn", **_encode_spawn(cfg, entry, setup)}, stdio)
        return int(reply["pid"])

    async def kill(self, pid: int, sig: int) -> None:
        """Signal a container process through its pidfd: never a recycled pid."""
        await self._call({"op": "kill", "pid": pid, "signal": sig})

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
