"""Every child of the pod daemon that the spawner does not report: one place that reaps.

The daemon is a child subreaper (shim/daemon.py), so besides the processes it starts itself
(runc and crun commands, through `run`), it inherits native containers' init processes once
runc exits, and the wasm container processes of a spawner that died. Each of those is
*watched*: a pidfd on the event loop, reaped with waitpid the moment it becomes readable,
its exit status delivered to a future. Signals go through the same pidfd.

Anything else that dies as our child (a process reparented to us that nobody claimed, or one
whose owner waits for it only later, like a binary logger) is collected too: SIGCHLD
triggers a sweep that reaps zombie children nobody watches or claims, but only after they
have been zombies for `ORPHAN_GRACE` seconds, so that an owner who learns a pid a moment
after the process ended (runc's pid file) still gets its exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence

from shim.errors import DeadlineExceeded, FailedPrecondition, NotFound
from shim.proc.process import exit_code_from_wait_status
from shim.procfs import stat_fields

log = logging.getLogger(__name__)

ORPHAN_GRACE = 1.0
UNKNOWN_STATUS = 255  # the exit status of a process that was never ours to reap


class NotInstalled(FailedPrecondition):
    """The program a command names is not on PATH."""


class Reaper:
    """Created and used on the daemon's event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watches: dict[int, tuple[int, asyncio.Future[int]]] = {}  # pid -> (pidfd, fut)
        self._claimed: set[int] = set()
        self._zombie_since: dict[int, float] = {}
        self._sweep_later: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self.sweep)

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(signal.SIGCHLD)
            for pidfd, _ in self._watches.values():
                self._loop.remove_reader(pidfd)
                os.close(pidfd)
        self._watches.clear()
        if self._sweep_later is not None:
            self._sweep_later.cancel()

    # ------------------------------------------------------------------ watching

    def claim(self, pid: int) -> None:
        """`pid` is accounted for elsewhere (a spawner's child): never sweep it."""
        self._claimed.add(pid)

    def release(self, pid: int) -> None:
        self._claimed.discard(pid)

    def watch(self, pid: int) -> asyncio.Future[int]:
        """The exit status of `pid`, our child now or soon (reparented). Idempotent."""
        assert self._loop is not None, "Reaper.start() first"
        if pid in self._watches:
            return self._watches[pid][1]
        fut: asyncio.Future[int] = self._loop.create_future()
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # already reaped by someone else: nothing to learn
            fut.set_result(self._reap(pid))
            return fut
        self._watches[pid] = (pidfd, fut)
        self._loop.add_reader(pidfd, self._on_exit, pid)
        return fut

    def _on_exit(self, pid: int) -> None:
        pidfd, fut = self._watches.pop(pid)
        assert self._loop is not None
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        self._claimed.discard(pid)
        if not fut.done():
            fut.set_result(self._reap(pid))

    @staticmethod
    def _reap(pid: int) -> int:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours (no subreaper), or reaped elsewhere
            log.warning("process %d was not our child; its exit status is unknown", pid)
            return UNKNOWN_STATUS
        if not done:  # readable pidfd but no zombie yet: cannot happen for our children
            _, status = os.waitpid(pid, 0)
        return exit_code_from_wait_status(status)

    def signal(self, pid: int, sig: int) -> None:
        """Signal a watched process through its pidfd. NotFound once it has exited."""
        entry = self._watches.get(pid)
        if entry is None:
            raise NotFound("process already finished")
        try:
            signal.pidfd_send_signal(entry[0], sig)
        except ProcessLookupError:
            raise NotFound("process already finished") from None

    # ------------------------------------------------------------------ commands

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdio: Sequence[int] | None = None,
        timeout: float = 60.0,
    ) -> int:
        """Run a command to completion; its exit status. stdio: three fds (default /dev/null).

        posix_spawn (vfork-like) is safe while the daemon has threads. Raises
        NotInstalled when the program cannot be found, DeadlineExceeded (after killing
        it) when it outlives `timeout`."""
        devnull = -1
        if stdio is None:
            devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            stdio = (devnull, devnull, devnull)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)]
            try:
                pid = os.posix_spawnp(argv[0], list(argv), dict(os.environ), file_actions=actions)
            except FileNotFoundError:
                raise NotInstalled(f"{argv[0]!r} is not installed") from None
        finally:
            if devnull >= 0:
                os.close(devnull)
        done = self.watch(pid)
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            with contextlib.suppress(NotFound):
                self.signal(pid, signal.SIGKILL)
            await done
            raise DeadlineExceeded(
                f"{argv[0]} {argv[1] if len(argv) > 1 else ''} did not finish in {timeout:.0f}s"
            ) from None

    # ------------------------------------------------------------------ orphans

    def sweep(self) -> None:
        """Reap zombie children that nobody watches or claims, after their grace period."""
        now = time.monotonic()
        zombies = {pid for pid in _children() if _is_zombie(pid)}
        pending = False
        for pid in zombies:
            if pid in self._watches or pid in self._claimed:
                continue
            since = self._zombie_since.setdefault(pid, now)
            if now - since < ORPHAN_GRACE:
                pending = True
                continue
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(pid, os.WNOHANG)
                log.info(
                    "reaped process %d, which nobody waited for (status %d)",
                    pid,
                    exit_code_from_wait_status(status),
                )
        self._zombie_since = {p: t for p, t in self._zombie_since.items() if p in zombies}
        if pending and self._loop is not None and self._sweep_later is None:
            self._sweep_later = self._loop.call_later(ORPHAN_GRACE, self._delayed_sweep)

    def _delayed_sweep(self) -> None:
        self._sweep_later = None
        self.sweep()


def _children() -> set[int]:
    """The pids of this process's children (every thread's), from /proc."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
    return found


def _is_zombie(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[:1] == [b"Z"]
