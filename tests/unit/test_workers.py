"""shim/workers.py: stuck blocking work holds its own thread, never the others' way.

Stuck work is a thread waiting on a threading.Event the test sets at the end; nothing here
sleeps to make a point, and every wait is bounded so a bug fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from shim.errors import DeadlineExceeded, ResourceExhausted
from shim.workers import Workers, within

GUARD = 10.0


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), GUARD * 2))


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """What stuck work waits for; set at teardown so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def stuck(gate: threading.Event, started: threading.Event | None = None) -> Callable[[], str]:
    def body() -> str:
        if started is not None:
            started.set()
        assert gate.wait(GUARD * 3)
        return "unstuck"

    return body


def test_stuck_calls_do_not_hold_up_the_others(gate: threading.Event) -> None:
    async def body() -> None:
        workers = Workers("test", limit=3, admission=GUARD)
        blocked = [asyncio.ensure_future(workers.call(f"stuck {i}", stuck(gate))) for i in (1, 2)]
        for i in range(20):  # one slot left, used again and again
            assert await workers.call(f"quick {i}", lambda i=i: i * 2) == i * 2
        assert sorted(what for what, _ in workers.busy()) == ["stuck 1", "stuck 2"]
        gate.set()
        assert await asyncio.gather(*blocked) == ["unstuck", "unstuck"]
        assert workers.busy() == []

    run(body)


def test_when_every_slot_is_stuck_a_call_is_refused_naming_them(gate: threading.Event) -> None:
    async def body() -> None:
        workers = Workers("Create and Delete", limit=2, admission=0.2)
        blocked = [asyncio.ensure_future(workers.call(f"create c{i}", stuck(gate))) for i in (1, 2)]
        await asyncio.sleep(0)  # both take their slots
        with pytest.raises(ResourceExhausted) as refused:
            await workers.call("create c3", lambda: "never")
        message = refused.value.message
        assert message.startswith("create c3: all 2 threads for Create and Delete")
        assert "create c1 (" in message and "create c2 (" in message
        # the refused call made no thread (counted by name: other tests' threads may end now)
        names = sorted(t.name for t in threading.enumerate())
        ours = [n for n in names if n.startswith("Create and Delete: ")]
        assert ours == ["Create and Delete: create c1", "Create and Delete: create c2"], names
        gate.set()
        await asyncio.gather(*blocked)
        assert await workers.call("create c3", lambda: "ran") == "ran"

    run(body)


def test_a_cancelled_caller_keeps_its_slot_until_the_thread_returns(gate: threading.Event) -> None:
    async def body() -> None:
        workers = Workers("test", limit=1, admission=0.2)
        started = threading.Event()
        call = asyncio.ensure_future(workers.call("stuck", stuck(gate, started)))
        assert await asyncio.to_thread(started.wait, GUARD)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        with pytest.raises(ResourceExhausted):  # the thread still runs: the slot is taken
            await workers.call("next", lambda: None)
        gate.set()
        assert await workers.call("next", lambda: "ran") == "ran"

    run(body)


def test_errors_reach_the_caller() -> None:
    async def body() -> None:
        workers = Workers("test", limit=1, admission=1)

        def fail() -> None:
            raise OSError(5, "I/O error")

        with pytest.raises(OSError, match="I/O error"):
            await workers.call("fail", fail)
        assert workers.busy() == []

    run(body)


def test_within_gives_up_with_deadline_exceeded_and_the_work_goes_on(
    gate: threading.Event,
) -> None:
    async def body() -> None:
        workers = Workers("test", limit=1, admission=1)
        work = asyncio.ensure_future(workers.call("create c1", stuck(gate)))
        with pytest.raises(DeadlineExceeded, match=r"create c1 did not finish within 0.1s"):
            await within(work, 0.1, "create c1")
        assert not work.done()
        gate.set()
        assert await asyncio.wait_for(work, GUARD) == "unstuck"
        assert await within(asyncio.ensure_future(asyncio.sleep(0, "x")), 1, "quick") == "x"

    run(body)


def test_start_runs_in_the_background_and_logs_failures(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        workers = Workers("test", limit=1, admission=1)
        ran = threading.Event()
        await workers.start("fine", ran.set)
        assert ran.is_set()

        def fail() -> None:
            raise RuntimeError("broken")

        with caplog.at_level(logging.ERROR, logger="shim.workers"), pytest.raises(RuntimeError):
            await workers.start("close the stdio of c1", fail)
        assert [r.getMessage() for r in caplog.records] == ["close the stdio of c1 failed"]

    run(body)


def test_threads_are_daemon_threads(gate: threading.Event) -> None:
    async def body() -> None:
        workers = Workers("test", limit=1, admission=1)
        started = threading.Event()
        call = asyncio.ensure_future(workers.call("stuck", stuck(gate, started)))
        assert await asyncio.to_thread(started.wait, GUARD)
        (thread,) = [t for t in threading.enumerate() if t.name == "test: stuck"]
        assert thread.daemon  # a stuck one never holds up the daemon's exit
        gate.set()
        await call

    run(body)


def test_a_thread_that_outlives_its_loop_ends_quietly(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's loop may end while a call still runs: the thread then has nobody to
    tell, and says nothing (no exception escapes it)."""
    escaped: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    started = threading.Event()

    async def body() -> None:
        workers = Workers("test", limit=1, admission=1)
        workers.start("close the stdio of c1", stuck(gate, started))
        assert await asyncio.to_thread(started.wait, GUARD)

    run(body)  # the loop ends; the thread is still in the call
    (thread,) = [t for t in threading.enumerate() if t.name == "test: close the stdio of c1"]
    gate.set()
    thread.join(GUARD)
    assert not thread.is_alive()
    assert escaped == []
