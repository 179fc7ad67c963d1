"""The event publisher against a fake containerd Events/Forward service (our own server)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import empty_pb2

from shim.api.containerd.events import task_pb2
from shim.api.containerd.services.ttrpc.events.v1 import events_pb2
from shim.errors import InvalidArgument
from shim.events import Publisher
from shim.ttrpc.server import CallContext, Server

# containerd's ttrpc events service (api/services/ttrpc/events/v1/events.proto)
CONTAINERD_EVENTS = "containerd.services.events.ttrpc.v1.Events"


def asynctest(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


class FakeContainerd:
    """Records every forwarded envelope; can be told to hold or reject calls."""

    def __init__(self) -> None:
        self.received: list[tuple[events_pb2.Envelope, CallContext]] = []
        self.changed = asyncio.Condition()
        self.gate: asyncio.Event | None = None
        self.reject_topics: set[str] = set()
        self.server: Server | None = None

    async def forward(self, req: events_pb2.ForwardRequest, ctx: CallContext) -> empty_pb2.Empty:
        if self.gate is not None:
            await self.gate.wait()
        if req.envelope.topic in self.reject_topics:
            raise InvalidArgument(f"bad topic {req.envelope.topic}")
        async with self.changed:
            self.received.append((req.envelope, ctx))
            self.changed.notify_all()
        return empty_pb2.Empty()

    async def serve(self, path: str) -> None:
        self.server = Server()
        self.server.register_service(
            CONTAINERD_EVENTS, {"Forward": (self.forward, events_pb2.ForwardRequest)}
        )
        await self.server.start(path)

    async def wait_for(self, count: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.received) >= count)

    def topics(self) -> list[str]:
        return [env.topic for env, _ in self.received]

    def exits(self) -> list[int]:
        out = []
        for env, _ in self.received:
            assert env.event.type_url == "containerd.events.TaskExit"
            out.append(task_pb2.TaskExit.FromString(env.event.value).pid)
        return out


def exit_event(pid: int) -> task_pb2.TaskExit:
    return task_pb2.TaskExit(container_id="c1", id="c1", pid=pid, exit_status=pid % 256)


class LogWatch(logging.Handler):
    """Sets an asyncio event (thread-safely) when a record containing ``text`` is logged."""

    def __init__(self, loop: asyncio.AbstractEventLoop, text: str) -> None:
        super().__init__()
        self.loop = loop
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.loop.call_soon_threadsafe(self.seen.set)


@asynctest
async def test_envelopes_in_order_with_bare_type_url_namespace_topic_timestamp(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "ev.sock")
    fake = FakeContainerd()
    await fake.serve(path)
    publisher = Publisher(path, "default")
    publisher.start()
    before = time.time_ns()
    publisher.publish("/tasks/create", task_pb2.TaskCreate(container_id="c1", bundle="/b", pid=7))
    publisher.publish("/tasks/start", task_pb2.TaskStart(container_id="c1", pid=7))
    for i in range(40):
        publisher.publish("/tasks/exit", exit_event(i))
    await publisher.close(timeout=30)
    after = time.time_ns()

    assert fake.topics() == ["/tasks/create", "/tasks/start"] + ["/tasks/exit"] * 40
    create, start = (env for env, _ in fake.received[:2])
    assert create.event.type_url == "containerd.events.TaskCreate"
    assert task_pb2.TaskCreate.FromString(create.event.value).bundle == "/b"
    assert start.event.type_url == "containerd.events.TaskStart"
    assert [e for e in (env.event.type_url for env, _ in fake.received[2:])] == [
        "containerd.events.TaskExit"
    ] * 40
    assert [task_pb2.TaskExit.FromString(env.event.value).pid for env, _ in fake.received[2:]] == (
        list(range(40))
    )
    stamps = [env.timestamp.ToNanoseconds() for env, _ in fake.received]
    assert all(before <= s <= after for s in stamps)
    assert stamps == sorted(stamps)
    assert {env.namespace for env, _ in fake.received} == {"default"}
    assert {ctx.namespace for _, ctx in fake.received} == {"default"}
    assert publisher.sent == 42 and publisher.dropped == 0
    await fake.server.shutdown()


@asynctest
async def test_retries_until_containerd_appears(tmp_path: Path) -> None:
    path = str(tmp_path / "late.sock")
    watch = LogWatch(asyncio.get_running_loop(), "retry in")
    logging.getLogger("shim.events").addHandler(watch)
    try:
        publisher = Publisher(path, "ns1", max_attempts=10_000, backoff=0.001, max_backoff=0.01)
        publisher.start()
        publisher.publish("/tasks/exit", exit_event(1))
        publisher.publish("/tasks/exit", exit_event(2))
        await watch.seen.wait()  # at least one attempt failed: nobody was listening
        fake = FakeContainerd()
        await fake.serve(path)
        await fake.wait_for(2)
        assert fake.exits() == [1, 2]
        await publisher.close()
    finally:
        logging.getLogger("shim.events").removeHandler(watch)
    await fake.server.shutdown()


@asynctest
async def test_reconnects_after_containerd_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "restart.sock")
    first = FakeContainerd()
    await first.serve(path)
    publisher = Publisher(path, "ns1", max_attempts=10_000, backoff=0.001, max_backoff=0.01)
    publisher.start()
    publisher.publish("/tasks/exit", exit_event(1))
    await first.wait_for(1)
    await first.server.shutdown()
    Path(path).unlink()
    publisher.publish("/tasks/exit", exit_event(2))
    publisher.publish("/tasks/exit", exit_event(3))
    second = FakeContainerd()
    await second.serve(path)
    await second.wait_for(2)
    assert first.exits() == [1]
    assert second.exits() == [2, 3]
    await publisher.close()
    await second.server.shutdown()


@asynctest
async def test_queue_bound_drops_oldest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "bound.sock")
    publisher = Publisher(path, "ns1", max_queue=3)
    with caplog.at_level(logging.ERROR, logger="shim.events"):
        for i in range(1, 6):
            publisher.publish("/tasks/exit", exit_event(i))
    assert publisher.pending == 3
    assert publisher.dropped == 2
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 2
    fake = FakeContainerd()
    await fake.serve(path)
    publisher.start()
    await publisher.close(timeout=30)
    assert fake.exits() == [3, 4, 5]
    await fake.server.shutdown()


@asynctest
async def test_publish_never_blocks_nor_raises_while_containerd_hangs(tmp_path: Path) -> None:
    path = str(tmp_path / "hang.sock")
    fake = FakeContainerd()
    fake.gate = asyncio.Event()
    await fake.serve(path)
    publisher = Publisher(path, "ns1", call_timeout=3600)
    publisher.start()
    for i in range(100):
        publisher.publish("/tasks/exit", exit_event(i))  # synchronous: cannot await anything
    publisher.publish("/tasks/exit", object())  # type: ignore[arg-type]  # logged, dropped
    assert publisher.pending >= 99
    fake.gate.set()
    await fake.wait_for(100)
    assert fake.exits() == list(range(100))
    await publisher.close()
    await fake.server.shutdown()


@asynctest
async def test_bounded_attempts_then_dropped(tmp_path: Path) -> None:
    publisher = Publisher(str(tmp_path / "nobody.sock"), "ns1", max_attempts=3, backoff=0.001)
    publisher.start()
    publisher.publish("/tasks/exit", exit_event(1))
    await publisher.close(timeout=3600)  # returns once the event was given up on
    assert publisher.dropped == 1 and publisher.sent == 0


@asynctest
async def test_rejected_event_is_dropped_and_the_next_delivered(tmp_path: Path) -> None:
    path = str(tmp_path / "reject.sock")
    fake = FakeContainerd()
    fake.reject_topics = {"/tasks/oom"}
    await fake.serve(path)
    publisher = Publisher(path, "ns1")
    publisher.start()
    publisher.publish("/tasks/oom", task_pb2.TaskOOM(container_id="c1"))
    publisher.publish("/tasks/exit", exit_event(9))
    await publisher.close(timeout=30)
    assert fake.exits() == [9]
    assert publisher.dropped == 1
    await fake.server.shutdown()


@asynctest
async def test_close_deadline_gives_up_on_unreachable_containerd(tmp_path: Path) -> None:
    publisher = Publisher(str(tmp_path / "gone.sock"), "ns1", max_attempts=10_000, backoff=0.01)
    publisher.start()
    for i in range(3):
        publisher.publish("/tasks/exit", exit_event(i))
    await publisher.close(timeout=0.05)
    assert publisher.sent == 0
    assert publisher.dropped == 3
    publisher.publish("/tasks/exit", exit_event(4))  # after close: dropped, not raised
    assert publisher.dropped == 4


@asynctest
async def test_publish_from_another_thread(tmp_path: Path) -> None:
    path = str(tmp_path / "thread.sock")
    fake = FakeContainerd()
    await fake.serve(path)
    publisher = Publisher(path, "ns1")
    publisher.start()

    def worker() -> None:
        for i in range(20):
            publisher.publish("/tasks/exit", exit_event(i))

    thread = threading.Thread(target=worker)
    thread.start()
    await asyncio.to_thread(thread.join)
    await fake.wait_for(20)
    assert fake.exits() == list(range(20))
    await publisher.close()
    await fake.server.shutdown()
