"""The pod daemon's handle on its spawner: spawn, kill, and the processes' news.

`spawn` returns a `Process` as soon as the spawner reports the fork; its `ready` and `exited`
futures resolve when the spawner's later messages arrive (shim/proc/wire.py). Every process
is also claimed with the reaper, so that if the spawner dies (its children are reparented to
the daemon, a subreaper), the reaper watches them instead: their exits are still reported
and they can still be signalled. New spawns then fail with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from runtimes.base import Entrypoint, RunConfig
from shim import errors
from shim.proc import wire
from shim.proc.child import ProcessSetup
from shim.proc.process import Process
from shim.proc.reaper import Reaper

log = logging.getLogger(__name__)


class SpawnerClient:
    def __init__(self, pid: int, sock: socket.socket, reaper: Reaper) -> None:
        self.pid = pid
        self.sock = sock
        self.reaper = reaper
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._live: dict[int, Process] = {}
        self._lost = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
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
        else:
            fut = self._waiting.pop(msg.get("req", -1), None)
            if fut is not None and not fut.done():
                if "pid" in msg:  # the process exists from this moment: track it at once
                    msg["process"] = self._live[msg["pid"]] = Process(pid=msg["pid"])
                    self.reaper.claim(msg["pid"])
                fut.set_result(msg)

    def _on_lost(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.sock.fileno())
        self._lost = True
        log.error("the spawner went away; running containers go on, new ones cannot start")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(errors.Unavailable("the shim's spawner is gone"))
        self._waiting.clear()
        # Its children are ours now (we are a subreaper): the reaper reports their exits.
        for pid, proc in self._live.items():
            proc.set_ready(errors.Unavailable("the shim's spawner went away during setup"))
            self.reaper.watch(pid).add_done_callback(
                lambda f, p=proc: p.set_exited(f.result())  # type: ignore[misc]
            )
            self.reaper.release(pid)
        self._live.clear()

    # ------------------------------------------------------------------ requests

    async def _call(self, msg: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        assert self._loop is not None
        if self._lost:
            raise errors.Unavailable("the shim's spawner is gone")
        self._next += 1
        req = msg["req"] = self._next
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._waiting[req] = fut
        data = wire.encode(msg)
        while True:
            try:
                if fds:
                    socket.send_fds(self.sock, [data], list(fds))
                else:
                    self.sock.send(data)
                break
            except BlockingIOError:  # the spawner is busy and its queue full: wait, not fail
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
        """Signal a container process through its pidfd: never a recycled pid."""
        if self._lost:
            self.reaper.signal(pid, sig)
            return
        await self._call({"op": "kill", "pid": pid, "signal": sig})

    def close(self) -> None:
        if self._loop is not None and not self._lost:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
