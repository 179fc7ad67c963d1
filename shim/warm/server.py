"""The warm runtime's loop: it forks pod daemons and compile jobs, and answers requests.

The loop is single-threaded (selectors), because it forks: a pod daemon per `start` that
needs one (shim/daemon.py), a compile job per compile request that the cache cannot answer
at once (a program up to `INLINE_LIMIT` whose entry is there is answered inline: the usual
case costs no fork). A job inherits the request's connection, answers on it when the cache
entry is verified or made, and exits; the runtime only reaps its children (a pidfd each on
the loop). So the runtime never blocks on a compile, never runs guest code, and holds no
state a daemon or a container depends on: kill it at any time, and the next `start` launches
another. Its boot is shim/warm/boot.py.

Every request is checked: the peer must be root (or our own uid), the message well formed,
the start request's bundle a directory. A `start` from another build (its identity differs)
is answered `retire`: we release the lock, unlink our socket (if it is still ours) and exit,
and that `start` launches the new build's runtime.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from runtimes.base import CacheSettings, EntrypointKind, Runtime
from shim import errors
from shim.options import ShimOptions
from shim.warm import protocol

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0  # a connection that sends nothing for this long is dropped
INLINE_LIMIT = 4 << 20  # programs up to this size are looked up without forking a job
MAX_CONNECTIONS = 256


def _error_reply(e: Exception) -> bytes:
    """An `error` answer: a ShimError's own code, INVALID_ARGUMENT for a malformed request
    (ValueError), UNKNOWN (and the traceback in the log) for anything else."""
    if isinstance(e, errors.ShimError):
        code = e.code
    elif isinstance(e, ValueError):
        code = errors.Code.INVALID_ARGUMENT
    else:
        log.error("request failed", exc_info=e)
        code = errors.Code.UNKNOWN
    return protocol.encode("error", [("code", str(int(code))), ("message", str(e))])


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    since: float


class WarmRuntime:
    def __init__(
        self, containerd_address: str, runtime: Runtime, identity: str, lock_fd: int
    ) -> None:
        self.address = containerd_address
        self.lock_fd = lock_fd
        self.runtime = runtime
        self.identity = identity
        self.path = protocol.control_path(containerd_address)
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.socket_inode = 0  # of our socket file: whether the path is still ours
        self.conns: dict[int, _Conn] = {}
        self.unwatched: set[int] = set()  # children without a pidfd (see _watch_child)
        self.retiring = False

    # ------------------------------------------------------------------ socket

    def bind(self) -> None:
        tmp = f"{self.path}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(128)
        self.socket_inode = os.stat(tmp).st_ino
        os.replace(tmp, self.path)
        sock.setblocking(False)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, None)

    def release_lock(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    def _still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.socket_inode
        except OSError:
            return False

    def retire(self, why: str) -> None:
        """Stop serving: from now on `start` finds no runtime here (or a new one)."""
        if self.retiring:
            return
        self.retiring = True
        log.info("retiring: %s", why)
        self.release_lock()  # a successor may start now
        if self.listener is not None:
            if self._still_ours():
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            self.sel.unregister(self.listener)
            self.listener.close()

    # ------------------------------------------------------------------ loop

    def serve(self) -> None:
        while not self.retiring:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data is None:
                    self._accept()
                elif isinstance(key.data, int):
                    self._reap_child(key.fd, key.data)
                else:
                    self._on_request(key.data)
                if self.retiring:
                    break
            self._drop_idle()
            self._poll_unwatched()

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("accept: %s", e)
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                oldest = min(self.conns.values(), key=lambda c: c.since)
                self._close(oldest)
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic())
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: _Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()

    def _drop_idle(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.conns.values() if now - c.since > REQUEST_TIMEOUT]:
            self._close(conn)

    def _reap_child(self, pidfd: int, pid: int) -> None:
        self.sel.unregister(pidfd)
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def _on_request(self, conn: _Conn) -> None:
        fds: list[int] = []
        try:
            data, fds, _flags, _ = socket.recv_fds(conn.sock, protocol.MAX_MESSAGE, 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            for fd in fds:
                os.close(fd)
            self._close(conn)
            return
        try:
            self._check_peer(conn.sock)
            msg = protocol.decode(data)
            if msg.op == "compile":
                self._compile(conn, msg, fds)
                fds = []  # the job owns them now
                return
            reply, then = self._answer(msg)
        except Exception as e:  # one bad request must not end the node's runtime
            then = None
            reply = _error_reply(e)
        finally:
            for fd in fds:
                os.close(fd)
        with contextlib.suppress(OSError):
            conn.sock.send(reply)
        self._close(conn)
        if then is not None:
            then()

    @staticmethod
    def _check_peer(sock: socket.socket) -> None:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (0, os.getuid()):
            raise errors.PermissionDenied(f"uid {uid} may not use the warm runtime")

    def _answer(self, msg: protocol.Message) -> tuple[bytes, Callable[[], None] | None]:
        """The reply, and what to do once it is sent."""
        if msg.op == "ping":
            pid = str(os.getpid())
            return protocol.encode("ok", [("identity", self.identity), ("pid", pid)]), None
        if msg.op == "retire":
            self.retire("asked to")
            return protocol.encode("ok"), None
        if msg.op == "start":
            if msg.get("identity") != self.identity:
                self.retire(f"a start from another build ({msg.get('identity')})")
                return protocol.encode("retire"), None
            return self._start(msg)
        raise errors.InvalidArgument(f"unknown operation {msg.op!r}")

    # ------------------------------------------------------------------ start

    def _start(self, msg: protocol.Message) -> tuple[bytes, Callable[[], None] | None]:
        """Bind the group's socket now and answer; fork its daemon after the answer."""
        from shim import daemon

        bundle = msg.get("bundle")
        if not os.path.isabs(bundle) or not os.path.isdir(bundle):
            raise errors.InvalidArgument(f"bundle {bundle!r} is not a directory")
        opts = ShimOptions(
            namespace=msg.get("namespace"),
            address=msg.get("address"),
            publish_binary=msg.get("publish_binary"),
            id=msg.get("id"),
            bundle=bundle,
            debug=msg.get("debug") == "1",
        )
        if not opts.id or not opts.namespace:
            raise errors.InvalidArgument("a start request names an id and a namespace")
        env = dict(item.partition("=")[::2] for item in msg.all("env"))
        address, listener = daemon.bind(opts, bundle)
        reply = protocol.encode("ok", [("address", address)])
        if listener is None:
            return reply, None

        def fork() -> None:
            try:
                self._watch_child(daemon.fork_daemon(opts, bundle, env, listener))
            except OSError as e:
                log.error("cannot fork the daemon of %s: %s", address, e)

        return reply, fork

    # ------------------------------------------------------------------ compile

    def _compile(self, conn: _Conn, msg: protocol.Message, fds: list[int]) -> None:
        """Answer at once when a small program's entry is in the cache; else fork a job that
        answers on `conn`. Either way the runtime keeps neither the connection nor the fd."""
        self.sel.unregister(conn.sock)
        self.conns.pop(conn.sock.fileno(), None)
        try:
            if len(fds) != 1:
                raise errors.InvalidArgument("a compile request carries the program's descriptor")
            kind = EntrypointKind(msg.get("kind"))
            cache = CacheSettings(dir=msg.get("cache_dir"), limit=int(msg.get("cache_limit")))
            if not os.path.isabs(cache.dir):
                raise errors.InvalidArgument(f"cache directory {cache.dir!r} is not absolute")
            note = ""
            if os.fstat(fds[0]).st_size <= INLINE_LIMIT:
                answered, note = self._answer_from_cache(
                    conn.sock, fds[0], kind, msg.get("name"), cache
                )
                if answered:
                    conn.sock.close()
                    return
            pid = os.fork()
        except Exception as e:  # one bad request must not end the node's runtime
            # The request's own fault is answered; a fault of this host (no fork, no memory,
            # an unreadable descriptor) is not: with no answer the container process
            # compiles the program itself, as without a warm runtime.
            if isinstance(e, errors.ShimError | ValueError):
                with contextlib.suppress(OSError):
                    conn.sock.send(_error_reply(e))
            else:
                log.warning("compile request left to the container process: %s", e)
            conn.sock.close()
            for fd in fds:
                os.close(fd)
            return
        if pid == 0:
            self._job(conn.sock, fds[0], kind, msg.get("name"), cache, note)
        conn.sock.close()
        os.close(fds[0])
        self._watch_child(pid)

    def _watch_child(self, pid: int) -> None:
        """Reap `pid` (a pod daemon or a compile job) when it ends, from the loop: through a
        pidfd, or when none can be had (out of descriptors), by polling it each second."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            self.unwatched.add(pid)
            return
        self.sel.register(pidfd, selectors.EVENT_READ, pid)

    def _poll_unwatched(self) -> None:
        for pid in list(self.unwatched):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.unwatched.discard(pid)

    def _answer_from_cache(
        self,
        sock: socket.socket,
        source_fd: int,
        kind: EntrypointKind,
        name: str,
        cache: CacheSettings,
    ) -> tuple[bool, str]:
        """(whether the verified entry was found and sent: the usual case, with no fork;
        a note for the log, about a damaged entry found and removed)."""
        try:
            found = self.runtime.find(os.dup(source_fd), kind, name, cache)
        except (errors.ShimError, OSError):
            return False, ""  # the job says what is wrong, or compiles
        if found.note:
            log.warning("compile %s: %s", name, found.note)
        if not found.path:
            return False, found.note
        with contextlib.suppress(OSError):
            sock.setblocking(True)
            sock.send(protocol.encode("ok", [("path", found.path), ("note", found.note)]))
        os.close(source_fd)
        return True, found.note

    def _job(
        self,
        sock: socket.socket,
        source_fd: int,
        kind: EntrypointKind,
        name: str,
        cache: CacheSettings,
        note: str,
    ) -> None:
        """In the forked job; never returns. `note`: what the runtime found before it."""
        code = 0
        try:
            # First the runtime's signal handlers: they would retire the runtime's state.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # Hold nothing of the runtime's: not its lock (a successor must get it while a
            # long compile runs), not another client's connection (its EOF must not wait).
            self.release_lock()
            if self.listener is not None:
                self.listener.close()
            for other in self.conns.values():
                other.sock.close()
            self.sel.close()
            sock.setblocking(True)
            try:
                done = self.runtime.compile(source_fd, kind, name, cache)
                note = "; ".join(n for n in (note, done.note) if n)
                reply = protocol.encode("ok", [("path", done.path), ("note", note)])
                if done.note:
                    log.info("compile %s: %s", name, done.note)
            except errors.ShimError as e:
                reply = _error_reply(e)
            with contextlib.suppress(OSError):
                sock.send(reply)
        except BaseException:
            log.exception("compile job for %s failed", name)
            code = 1
        os._exit(code)
