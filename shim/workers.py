"""Threads for the daemon's blocking host work, bounded, so that stuck work cannot starve the rest.

The event loop must never block, so whatever may (mounting, opening what a client names,
waiting for a logging binary, unmounting) runs on a thread. asyncio's default executor queues
work behind its busy threads without limit of time: a few operations stuck in the kernel (a
hung FUSE or NFS mount under a path a spec names) would hold every later Create and Delete
in that queue, unanswered, for ever.

:class:`Workers` runs each call on a thread of its own, at most ``limit`` at once, and never
queues for long: a call waits at most ``admission`` seconds for a free slot, then fails with
RESOURCE_EXHAUSTED naming what holds the slots and for how long. A slot is freed only when its
thread really returns (a thread cannot be interrupted), so ``limit`` bounds the threads.
Deadlines are the caller's: :func:`within` stops waiting for a call after ``timeout`` seconds
with DEADLINE_EXCEEDED while the call goes on, so the caller can still release what it
acquires when it does finish. The threads are daemon threads: the daemon's exit never waits
for one stuck in the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from shim.errors import DeadlineExceeded, ResourceExhausted

log = logging.getLogger(__name__)

T = TypeVar("T")


class Workers:
    """At most ``limit`` threads for one kind of work (``name`` appears in errors)."""

    def __init__(self, name: str, limit: int, admission: float) -> None:
        self.name = name
        self.limit = limit
        self.admission = admission
        self._slots = asyncio.Semaphore(limit)
        self._busy: dict[int, tuple[str, float]] = {}  # ticket -> (what, started at)
        self._tickets = 0
        self._background: set[asyncio.Task[object]] = set()

    def busy(self) -> list[tuple[str, float]]:
        """What runs now and for how many seconds, oldest first."""
        now = time.monotonic()
        return [(what, now - started) for what, started in self._busy.values()]

    async def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a thread of its own and return what it returns (or raise what it
        raises). ``what`` ("create c1") names the work in errors and in the thread's name.

        Raises ResourceExhausted when no slot frees up within ``admission`` seconds.
        Cancelling the caller does not stop the thread; its slot is freed when it returns.
        """
        try:
            async with asyncio.timeout(self.admission):
                await self._slots.acquire()
        except TimeoutError:
            held = ", ".join(f"{w} ({age:.0f}s)" for w, age in self.busy())
            raise ResourceExhausted(
                f"{what}: all {self.limit} threads for {self.name} have been busy for "
                f"{self.admission:g}s (running: {held}); try again later"
            ) from None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._tickets += 1
        ticket = self._tickets
        self._busy[ticket] = (what, time.monotonic())

        def free() -> bool:
            """Give the slot back; True when somebody still waits for the outcome."""
            del self._busy[ticket]
            self._slots.release()
            return not done.cancelled()

        def succeeded(result: T) -> None:
            if free():
                done.set_result(result)

        def failed(error: BaseException) -> None:
            if free():
                done.set_exception(error)

        def body() -> None:
            try:
                result = fn()
            except BaseException as error:  # handed to the awaiting side
                report: Callable[[], None] = functools.partial(failed, error)
            else:
                report = functools.partial(succeeded, result)
            # The loop may have ended meanwhile (the daemon is exiting): nobody is left to
            # tell, and the slot dies with the semaphore.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(report)

        try:
            threading.Thread(target=body, name=f"{self.name}: {what}", daemon=True).start()
        except BaseException:
            free()
            raise
        return await done

    def start(self, what: str, fn: Callable[[], object]) -> asyncio.Task[object]:
        """:meth:`call` in the background, for callers that cannot await (callbacks); a
        failure is logged. The task is kept until it ends."""
        task: asyncio.Task[object] = asyncio.ensure_future(self.call(what, fn))
        self._background.add(task)

        def finished(t: asyncio.Task[object]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed", what, exc_info=t.exception())

        task.add_done_callback(finished)
        return task


async def within(work: asyncio.Future[T], timeout: float, what: str) -> T:
    """Wait for ``work`` at most ``timeout`` seconds. Past that, raise DeadlineExceeded and
    leave ``work`` running (it is shielded: the caller decides what to do with its result,
    e.g. release what it acquired). Cancelling the caller does not cancel ``work`` either."""
    timer = asyncio.timeout(timeout)
    try:
        async with timer:
            return await asyncio.shield(work)
    except TimeoutError:
        if timer.expired():
            raise DeadlineExceeded(
                f"{what} did not finish within {timeout:g}s (it goes on in the background)"
            ) from None
        raise
