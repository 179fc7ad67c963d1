"""The pod daemon's handle on its spawner: spawn, kill, the processes' news, and a new
spawner when the one it had dies.

`spawn` returns a `Process` as soon as the spawner reports the fork; its `ready` and `exited`
futures resolve when the spawner's later messages arrive (shim/proc/wire.py). Every process
is also claimed with the reaper, so that if the spawner dies (its children are reparented to
the daemon, a subreaper), the reaper watches them instead: their exits are still reported
and they can still be signalled, through the reaper's pidfds, for as long as they live.

A spawner that dies is replaced at once when the client has a `SpawnerCommand` (the daemon's
does; shim/proc/spawner.py, "A replacement"): the new one boots while nothing waits for it,
and requests wait for its hello (at most `BOOT_TIMEOUT`), then go to it. One that fails to
boot, or reports another build than the daemon's, is not replaced at once: a later spawn
tries again, except after another build (the binary was upgraded under a running pod), which
no retry can change. Without a command (tests that play the daemon), spawns fail with
UNAVAILABLE from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import signal
import socket
from collections.abc import Sequence
from typing import Any

from runtimes.base import Entrypoint, RunConfig
from shim import errors
from shim.proc import wire
from shim.proc.child import ProcessSetup
from shim.proc.process import Process
from shim.proc.reaper import Reaper
from shim.proc.spawner import SpawnerCommand

log = logging.getLogger(__name__)

BOOT_TIMEOUT = 60.0  # seconds a new spawner has to boot (a cold engine) and say hello


class _State(enum.Enum):
    SERVING = "serving"  # a spawner answers on `sock`
    BOOTING = "booting"  # a new spawner was started; requests wait for its hello
    GONE = "gone"  # no spawner; `_why_gone` says why


class SpawnerClient:
    def __init__(
        self,
        pid: int,
        sock: socket.socket,
        reaper: Reaper,
        command: SpawnerCommand | None = None,
    ) -> None:
        self.pid = pid
        self.sock = sock
        self.reaper = reaper
        self.command = command
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._live: dict[int, Process] = {}
        self._orphans: set[int] = set()  # processes of a dead spawner: the reaper's now
        self._state = _State.SERVING
        self._hello: asyncio.Future[None] | None = None
        self._boot_timer: asyncio.TimerHandle | None = None
        self._why_gone = ""
        self._other_build = ""  # set once a new spawner ran another build: final
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._listen()

    def _listen(self) -> None:
        assert self._loop is not None
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    # ------------------------------------------------------------------ news

    def _on_readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(wire.MAX_REPLY)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._on_lost()
                return
            try:
                self._dispatch(wire.decode(data))
            except (ValueError, KeyError, TypeError):
                log.exception("spawner: unreadable message %r", data[:200])

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "ready" in msg:
            proc = self._live.get(msg["ready"])
            if proc is not None:
                proc.note = str(msg.get("note") or "")
                proc.set_ready()
        elif "failed" in msg:
            proc = self._live.get(msg["failed"])
            if proc is not None:
                proc.set_ready(wire.error_of(msg))
        elif "exit" in msg:
            proc = self._live.pop(msg["exit"], None)
            self.reaper.release(msg["exit"])
            if proc is not None:
                proc.set_ready(errors.FailedPrecondition("the container process ended"))
                proc.set_exited(int(msg["status"]))
        elif "hello" in msg:
            self._on_hello(str(msg.get("identity")))
        elif "fatal" in msg:
            self._why_gone = f"a new spawner failed to start: {msg['fatal']}"
        else:
            fut = self._waiting.pop(msg.get("req", -1), None)
            if fut is not None and not fut.done():
                if "pid" in msg:  # the process exists from this moment: track it at once
                    msg["process"] = self._live[msg["pid"]] = Process(pid=msg["pid"])
                    self.reaper.claim(msg["pid"])
                fut.set_result(msg)

    def _on_hello(self, identity: str) -> None:
        """A new spawner booted: use it if it runs the daemon's own build."""
        if self._state is not _State.BOOTING or self.command is None:
            return
        if identity != self.command.identity:
            self._other_build = (
                f"the shim's spawner died and the shim program on disk is now another build "
                f"({identity}) than this pod's daemon ({self.command.identity}): new "
                "containers of this pod cannot start until the pod is recreated"
            )
            log.error("%s", self._other_build)
            os.kill(self.pid, signal.SIGKILL)  # our child, not reaped yet: its pid is its own
            return  # its socket's end follows (_on_lost)
        self._cancel_boot_timer()
        self._state = _State.SERVING
        assert self._hello is not None
        self._hello.set_result(None)
        log.info("a new spawner (pid %d) serves this pod", self.pid)

    def _on_lost(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.sock.fileno())
        self._loop.remove_writer(self.sock.fileno())  # a request waiting for room: see _call
        self.sock.close()
        self._cancel_boot_timer()
        was, pid = self._state, self.pid
        self._state = _State.GONE
        self.reaper.watch(pid).add_done_callback(
            lambda f: log.info("the spawner (pid %d) ended with status %d", pid, f.result())
        )
        if was is _State.BOOTING:
            self._why_gone = (
                self._other_build or self._why_gone or "a new spawner ended before it was ready"
            )
            log.error("%s", self._why_gone)
            if self._hello is not None and not self._hello.done():
                self._hello.set_exception(errors.Unavailable(self._why_gone))
                self._hello.exception()  # retrieved: nobody may be waiting
        else:
            self._why_gone = "the shim's spawner is gone"
            log.error("the spawner (pid %d) went away; running containers go on", pid)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(errors.Unavailable(self._why_gone))
        self._waiting.clear()
        # Its children are ours now (we are a subreaper): the reaper reports their exits.
        for child, proc in self._live.items():
            proc.set_ready(errors.Unavailable("the shim's spawner went away during setup"))
            self._orphans.add(child)
            self.reaper.watch(child).add_done_callback(
                lambda f, p=proc, c=child: self._orphan_exited(p, c, f.result())  # type: ignore[misc]
            )
            self.reaper.release(child)
        self._live.clear()
        if was is _State.SERVING and self.command is not None:
            self._relaunch()  # now, so that it boots while nothing waits for it

    def _orphan_exited(self, proc: Process, pid: int, status: int) -> None:
        self._orphans.discard(pid)
        proc.set_exited(status)

    # ------------------------------------------------------------------ a new spawner

    def _relaunch(self) -> None:
        """Start a new spawner (BOOTING), or stay GONE saying why it could not start."""
        assert self._loop is not None and self.command is not None
        try:
            pid, sock = self.command.launch()
        except OSError as e:
            self._why_gone = f"cannot start a new spawner ({self.command.argv[0]}): {e}"
            log.error("%s", self._why_gone)
            return
        self.pid, self.sock = pid, sock
        self.reaper.claim(pid)  # its end is ours to notice (_on_lost), not the sweep's
        self._state = _State.BOOTING
        self._why_gone = ""
        self._hello = self._loop.create_future()
        self._boot_timer = self._loop.call_later(BOOT_TIMEOUT, self._boot_timed_out)
        self._listen()
        log.info("started a new spawner (pid %d)", pid)

    def _boot_timed_out(self) -> None:
        self._boot_timer = None
        if self._state is _State.BOOTING:
            self._why_gone = f"a new spawner did not start within {BOOT_TIMEOUT:.0f}s"
            os.kill(self.pid, signal.SIGKILL)  # its end of the socket follows (_on_lost)

    def _cancel_boot_timer(self) -> None:
        if self._boot_timer is not None:
            self._boot_timer.cancel()
            self._boot_timer = None

    async def _serving(self) -> None:
        """Return once a spawner serves; raise Unavailable when none can."""
        if self._state is _State.GONE:
            if self.command is None or self._other_build:
                raise errors.Unavailable(self._other_build or self._why_gone)
            self._relaunch()  # the last one failed to boot: one more try, for this request
            if self._state is _State.GONE:
                raise errors.Unavailable(self._why_gone)
        if self._state is _State.BOOTING:
            assert self._hello is not None
            await asyncio.shield(self._hello)  # bounded by the boot timer

    # ------------------------------------------------------------------ requests

    async def _call(self, msg: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        assert self._loop is not None
        await self._serving()
        self._next += 1
        req = msg["req"] = self._next
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._waiting[req] = fut
        data = wire.encode(msg)
        sock = self.sock
        while True:
            try:
                if fds:
                    socket.send_fds(sock, [data], list(fds))
                else:
                    sock.send(data)
                break
            except BlockingIOError:  # the spawner is busy and its queue full: wait, not fail
                writable = self._loop.create_future()
                self._loop.add_writer(sock.fileno(), _resolve, writable)
                try:  # until it has room, or it is gone (`fut` fails then)
                    await asyncio.wait((writable, fut), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if sock.fileno() >= 0:  # closed by _on_lost, which removed the writer
                        self._loop.remove_writer(sock.fileno())
                if fut.done():
                    break
            except OSError as e:
                self._waiting.pop(req, None)
                if e.errno == errno.EMSGSIZE:
                    raise errors.InvalidArgument(
                        f"the container's configuration is too large ({len(data)} bytes) for "
                        "the shim's spawner"
                    ) from None
                raise errors.Unavailable(f"the shim's spawner is gone: {e}") from None
        reply = await fut
        if "code" in reply:
            raise wire.error_of(reply)
        return reply

    async def spawn(
        self, cfg: RunConfig, entry: Entrypoint, setup: ProcessSetup, stdio: Sequence[int]
    ) -> Process:
        """Fork a container process; returns once it exists (its pid is known)."""
        reply = await self._call(wire.spawn_request(cfg, entry, setup), stdio)
        process: Process = reply["process"]  # its news may have arrived already: it holds them
        return process

    async def kill(self, pid: int, sig: int) -> None:
        """Signal a container process through its pidfd: never a recycled pid. A process
        of a spawner that died is signalled through the reaper's pidfd."""
        if pid in self._orphans or self._state is not _State.SERVING:
            self.reaper.signal(pid, sig)  # NotFound unless it is a live orphan
            return
        try:
            await self._call({"op": "kill", "pid": pid, "signal": sig})
        except errors.Unavailable:
            if pid not in self._orphans:  # the spawner died with the request in flight
                raise
            self.reaper.signal(pid, sig)

    def close(self) -> None:
        """At the daemon's exit: close the socket (the spawner's loop ends) and reap it."""
        self._cancel_boot_timer()
        if self._state is _State.GONE:
            return  # its socket is closed and the reaper reaps it
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self._state is _State.BOOTING:  # it would read the socket only once booted
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
