"""The spawner: the pod daemon's fork server for wasm container processes.

Why a separate process: a container process must be its own OS process (per-container
kill, cgroup and memory accounting; a crashing guest cannot take the shim down), and forking
the daemon itself is unsafe once it runs threads (a lock held by another thread at the fork
stays held for ever in the child). The daemon forks the spawner first thing, while it is
still single-threaded; the spawner never starts a thread, so it can fork at any time. It
imports nothing of its own: it inherits every page the warm runtime loaded, and so does
every process it forks (`Runtime.warm()` only does work in a shim that started cold).

One selector loop over the daemon's socket, the children's ready pipes and their pidfds. The
pid goes back the moment the child exists, so the daemon can signal a child that never
becomes ready (a start function that loops); readiness and the exit status follow as
separate messages (shim/proc/wire.py). Signals go through the pidfd, so a recycled pid is
never hit. One bad request never ends the loop: its error goes back to the daemon.

A replacement. When the spawner dies, the daemon (threaded by then, so it cannot fork)
starts another with `SpawnerCommand`: posix_spawn of the shim's own program, the binary or
the venv's script, as `<shim> ... spawner` (`main` below), with its end of a new socket as
descriptor 3. It boots as a cold shim does (the engine's modules, the Engine: its pages are
its own, not the warm runtime's), then says hello with its build identity; the daemon uses
it only if that is the build the daemon runs itself (shim/proc/client.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtimes.base import Runtime
from shim import errors, libc, logs
from shim.confine.policy import CLONE_NEWPID, PID_HOST, PID_NEW
from shim.options import ShimOptions
from shim.proc import wire
from shim.proc.child import decode_report, ready_note, run_child, setup_death
from shim.proc.process import exit_code_from_wait_status

log = logging.getLogger(__name__)

SO_SNDBUFFORCE = 32
SOCKET_FD = 3  # where a spawner started by `SpawnerCommand` finds its end of the socket


@dataclass(slots=True)
class _Child:
    pid: int
    pidfd: int
    ready_fd: int  # -1 once the child has reported
    ready_watched: bool = True  # ready_fd is in the selector
    report: bytearray = field(default_factory=bytearray)
    memory_limit: int | None = None  # to tell an OOM kill during setup
    usage_file: str = ""


class Spawner:
    """The loop (runs in the spawner process)."""

    def __init__(self, sock: socket.socket, runtime: Runtime) -> None:
        self.sock = sock
        self.runtime = runtime
        self.sel = selectors.DefaultSelector()
        self.by_pid: dict[int, _Child] = {}
        self._own_pid_ns = -1  # opened on first use: to return to after a fork into another
        self._pid = os.getpid()

    def send(self, msg: dict[str, Any]) -> None:
        """A failed send is logged, never raised: the loop must outlive any one request."""
        try:
            self.sock.send(wire.encode(msg))
        except OSError as e:
            log.error("spawner: cannot answer the daemon (%s): %s", e, str(msg)[:200])

    def serve(self) -> None:
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    if not self._on_request():
                        return
                    continue
                kind, child = key.data
                if kind == "ready":
                    if child.ready_fd >= 0:  # not already read to the end by _on_exit
                        self._on_report(child)
                else:
                    self._on_exit(child)

    def _on_request(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, wire.MAX_REQUEST, 4)
        except ConnectionError:
            return False
        if not data:
            return False
        msg: Any = None
        try:
            msg = wire.decode(data)
            if msg["op"] == "spawn":
                self._spawn(msg, fds)
                return True
            for fd in fds:
                os.close(fd)
            if msg["op"] == "kill":
                self._kill(msg)
            else:
                raise ValueError(f"unknown op {msg['op']!r}")
        except Exception as e:  # one bad request must not end the spawner (and its children)
            log.exception("spawner: request failed")
            req = msg.get("req") if isinstance(msg, dict) else None
            self.send(wire.error_reply(req, errors.Code.INTERNAL, f"spawner: {e}"))
        return True

    def _spawn(self, msg: dict[str, Any], fds: list[int]) -> None:
        req = msg["req"]
        ready_r = ready_w = -1
        try:
            cfg, entry, setup = wire.parse_spawn(msg)
            if len(fds) != 3 + setup.compile_channel:
                raise ValueError(
                    f"a spawn request carries {len(fds)} descriptors, not "
                    f"{3 + setup.compile_channel}"
                )
            join_pidfd = -1
            if setup.join_pid:
                init = self.by_pid.get(setup.join_pid)
                if init is None:
                    raise ValueError(
                        f"process {setup.join_pid} to exec beside is not a running process of "
                        "this spawner (it has exited, or the spawner was replaced since)"
                    )
                # Unreaped until this loop says so: its pid, and the PID namespace path the
                # fork below joins by it, are the init's. The child re-checks with the pidfd.
                join_pidfd = init.pidfd
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
            pid_mode = setup.confinement.pid if setup.confinement else PID_HOST
            pid = self._fork(pid_mode)
        except (KeyError, TypeError, ValueError, OSError) as e:
            for fd in (*fds, ready_r, ready_w):
                if fd >= 0:
                    os.close(fd)
            code = errors.Code.INTERNAL if isinstance(e, OSError) else errors.Code.INVALID_ARGUMENT
            self.send(wire.error_reply(req, code, f"cannot start a container process: {e}"))
            return
        if pid == 0:
            run_child(self.runtime, cfg, entry, setup, fds, ready_w, join_pidfd)
        os.close(ready_w)
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:  # no way to watch it: end it rather than lose its exit
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(ready_r)
            self.send(wire.error_reply(req, errors.Code.INTERNAL, f"cannot watch it: {e}"))
            return
        child = _Child(
            pid=pid,
            pidfd=pidfd,
            ready_fd=ready_r,
            memory_limit=cfg.memory_limit,
            usage_file=setup.memory_usage_file,
        )
        self.by_pid[pid] = child
        self.sel.register(ready_r, selectors.EVENT_READ, ("ready", child))
        self.sel.register(pidfd, selectors.EVENT_READ, ("exit", child))
        self.send({"req": req, "pid": pid})

    def _fork(self, pid_mode: str) -> int:
        """fork(), the child in the PID namespace `pid_mode` asks for: the spawner's own, a
        new one (the child is its init), or the one at a path (a pod's shared namespace).
        unshare/setns of a PID namespace only decide where the *next* child goes, so the
        spawner returns to its own namespace right after the fork."""
        if pid_mode == PID_HOST:
            return os.fork()
        if self._own_pid_ns < 0:
            self._own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        if pid_mode == PID_NEW:
            libc.unshare(CLONE_NEWPID)
        else:
            fd = os.open(pid_mode, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                libc.setns(fd, CLONE_NEWPID)
            except OSError as e:
                raise OSError(e.errno, f"setns pid {pid_mode}: {e.strerror}") from None
            finally:
                os.close(fd)
        try:
            return os.fork()
        finally:
            if os.getpid() == self._pid:
                libc.setns(self._own_pid_ns, CLONE_NEWPID)

    def _on_report(self, child: _Child) -> None:
        chunk = os.read(child.ready_fd, 65536)
        child.report += chunk
        if not chunk and not child.report:
            # Died without a word (killed during setup): its exit status is the only clue,
            # so the answer waits for _on_exit.
            self.sel.unregister(child.ready_fd)
            child.ready_watched = False
        elif not chunk or child.report[:1] == b"R":
            self._finish_report(child, None)

    def _finish_report(self, child: _Child, status: int | None) -> None:
        """Tell the daemon whether the child got ready; `status` when it is already gone."""
        if child.ready_watched:
            self.sel.unregister(child.ready_fd)
        os.close(child.ready_fd)
        child.ready_fd = -1
        failure = decode_report(bytes(child.report)) if child.report else None
        if child.report and failure is None:
            self.send({"ready": child.pid, "note": ready_note(bytes(child.report))})
            return
        if failure is None:
            failure = (
                errors.Code.FAILED_PRECONDITION,
                setup_death(status, child.memory_limit, child.usage_file),
            )
        code, message = failure
        self.send({"failed": child.pid, "code": int(code), "message": message})

    def _on_exit(self, child: _Child) -> None:
        self.sel.unregister(child.pidfd)
        _, wait_status = os.waitpid(child.pid, 0)
        os.close(child.pidfd)
        del self.by_pid[child.pid]
        status = exit_code_from_wait_status(wait_status)
        if child.ready_fd >= 0:  # its ready pipe holds all it will ever say: answer first
            with contextlib.suppress(OSError):
                while chunk := os.read(child.ready_fd, 65536):
                    child.report += chunk
            self._finish_report(child, status)
        self.send({"exit": child.pid, "status": status})

    def _kill(self, msg: dict[str, Any]) -> None:
        req = msg["req"]
        child = self.by_pid.get(int(msg["pid"]))
        if child is None:
            self.send(wire.error_reply(req, errors.Code.NOT_FOUND, "process already finished"))
            return
        sig = int(msg["signal"])
        try:
            signal.pidfd_send_signal(child.pidfd, sig)
        except ProcessLookupError:
            self.send(wire.error_reply(req, errors.Code.NOT_FOUND, "process already finished"))
            return
        except OSError as e:
            self.send(wire.error_reply(req, errors.Code.INTERNAL, f"kill: {e.strerror}"))
            return
        self.send({"req": req, "ok": True})


def _socketpair() -> tuple[socket.socket, socket.socket]:
    """(the daemon's end, the spawner's end), each with room for a spawn request with a
    large environment."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in pair:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, wire.SOCKET_BUFFER)
        except OSError:  # without CAP_NET_ADMIN: as much as net.core.wmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wire.SOCKET_BUFFER)
    return pair


def fork_spawner(
    runtime: Runtime, close: Sequence[int] = (), on_start: Callable[[], None] | None = None
) -> tuple[int, socket.socket]:
    """Fork the spawner and return (its pid, the daemon's end of the socket).

    Call before any thread exists in this process. `close`: descriptors of the daemon the
    spawner must not hold (the listening socket); `on_start`: run first in the spawner (its
    logging). The spawner dies with the daemon."""
    parent_sock, child_sock = _socketpair()
    daemon_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            parent_sock.close()
            for fd in close:
                os.close(fd)
            if on_start is not None:
                on_start()
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != daemon_pid:
                os._exit(0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            runtime.warm()
            Spawner(child_sock, runtime).serve()
        except BaseException:
            log.exception("spawner failed")
            code = 1
        os._exit(code)
    child_sock.close()
    return pid, parent_sock


@dataclass(frozen=True, slots=True)
class SpawnerCommand:
    """How a daemon that has threads starts a spawner (module docstring, "A replacement")."""

    argv: tuple[str, ...]
    identity: str  # the build the daemon runs; a spawner of another build is not used

    @classmethod
    def of_daemon(cls, opts: ShimOptions, bundle: str) -> SpawnerCommand:
        """The command for this daemon: its flags (so that `ps` and containerd's log name
        its pod), and the identity of the code it runs (computed before it was forked:
        shim/warm/identity.py)."""
        from shim.warm.identity import build_identity
        from shim.warm.launch import self_argv

        flags = ["-namespace", opts.namespace, "-id", opts.id, "-address", opts.address]
        flags += ["-bundle", bundle, *(["-debug"] if opts.debug else [])]
        return cls(argv=(*self_argv(), *flags, "spawner"), identity=build_identity())

    def launch(self) -> tuple[int, socket.socket]:
        """Start one; (its pid, the daemon's end of its socket). posix_spawn (vfork-like) is
        safe in a threaded process. Call on the daemon's main thread: the spawner's
        PR_SET_PDEATHSIG fires when the thread that started it ends. Raises OSError."""
        parent_sock, child_sock = _socketpair()
        try:
            # Nothing of the daemon but stdio and the socket: a stray inheritable descriptor
            # (a FIFO) held by the spawner would keep its other end from ever seeing EOF.
            actions: list[tuple[int, ...]] = [
                (os.POSIX_SPAWN_CLOSE, fd)
                for fd in _inheritable_fds()
                if fd > 2 and fd != child_sock.fileno()
            ]
            actions.append((os.POSIX_SPAWN_DUP2, child_sock.fileno(), SOCKET_FD))
            pid = os.posix_spawn(
                self.argv[0],
                list(self.argv),
                dict(os.environ),
                file_actions=actions,
                setsigmask=(),
            )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        return pid, parent_sock


def _inheritable_fds() -> list[int]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.get_inheritable(int(name)):
                found.append(int(name))
    return found


def main(opts: ShimOptions) -> int:
    """`<shim> ... spawner`: a spawner started by `SpawnerCommand`. It boots the engine,
    says hello with its build, and serves until the daemon's end of the socket closes (or
    the daemon dies: PR_SET_PDEATHSIG). A failure to boot is told to the daemon as "fatal"
    before the process exits."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    sock = socket.socket(fileno=SOCKET_FD)
    sock.set_inheritable(False)
    logs.setup(opts.bundle, opts.id, opts.debug)
    try:
        from runtimes.wasmtime import WasmtimeRuntime
        from shim.warm.identity import build_identity

        runtime = WasmtimeRuntime()
        runtime.warm()
        spawner = Spawner(sock, runtime)
        spawner.send({"hello": os.getpid(), "identity": build_identity()})
        spawner.serve()
    except Exception as e:
        log.exception("spawner failed")
        with contextlib.suppress(OSError):
            sock.send(wire.encode({"fatal": f"{type(e).__name__}: {e}"}))
        return 1
    return 0
