"""Our ttrpc client and event publisher against the real containerd, not our own server.

The unit tests prove the client and the publisher against our own ttrpc server, which shares
our reading of the protocol; only containerd can show that reading is right. Every event here
is observed back through containerd itself: its gRPC ``Events/Subscribe`` stream (and, once,
``ctr events``, which decodes the event with containerd's own type registry).

Facts these tests rely on (containerd 1.6, services/events and events/exchange):

- ``Subscribe`` streams every namespace: the ``containerd-namespace`` gRPC header (what
  containerd's Go client sends, read by the server's namespace interceptor) does not narrow
  it, so each subscription also filters on ``namespace==<ns>``.
- Subscribe has no acknowledgement: the stream says nothing until an event matches. Before
  the event under test is sent, probe events are forwarded until each subscriber has seen
  one, so "subscribed before sending" is proven rather than hoped for.
- A filter on ``event.container_id`` only matches if containerd could decode our ``Any``
  through its type registry, so the delivery itself shows the ``type_url`` resolved.
- Forward validates the envelope (namespace identifier, topic, timestamp) and answers
  INVALID_ARGUMENT with its own error text.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import grpc.aio
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from shim.api.containerd.events import task_pb2
from shim.api.containerd.services.events.v1 import events_pb2 as grpc_events
from shim.api.containerd.services.events.v1 import events_pb2_grpc
from shim.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_events
from shim.api.containerd.types import mount_pb2
from shim.errors import InvalidArgument
from shim.events import EVENTS_SERVICE, FORWARD_METHOD, Publisher
from shim.ttrpc.client import Client
from shim.ttrpc.messages import NAMESPACE_KEY
from tests.containerd import PrivateContainerd

# containerd's namespaces.GRPCHeader; the ttrpc twin is NAMESPACE_KEY.
GRPC_NAMESPACE_KEY = "containerd-namespace"
WAIT = 10.0
PROBE_TOPIC = "/test/probe"
PROBE_PERIOD = 0.2

T = TypeVar("T")

# A fixed exit time with all nine nanosecond digits, so every conversion must keep them.
EXITED_AT = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_456_789)


# --------------------------------------------------------------------- helpers


def quote(value: str) -> str:
    """A containerd filter value: Go string syntax, which JSON's is for these values."""
    return json.dumps(value)


def selectors(namespace: str, *more: str) -> str:
    """One filter (selectors joined by ``,`` must all match), always narrowed to a namespace."""
    return ",".join([f"namespace=={quote(namespace)}", *more])


def go_rfc3339nano(ts: timestamp_pb2.Timestamp) -> str:
    """How Go's encoding/json writes a time.Time in UTC: RFC 3339, fraction without zeros."""
    whole = datetime.datetime.fromtimestamp(ts.seconds, datetime.UTC)
    fraction = f".{ts.nanos:09d}".rstrip("0").rstrip(".")
    return whole.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def envelope(
    namespace: str,
    topic: str,
    event: Message,
    *,
    type_url: str | None = None,
    timestamp: timestamp_pb2.Timestamp | None = None,
) -> ttrpc_events.Envelope:
    return ttrpc_events.Envelope(
        timestamp=now() if timestamp is None else timestamp,
        namespace=namespace,
        topic=topic,
        event=any_pb2.Any(
            type_url=type_url or event.DESCRIPTOR.full_name, value=event.SerializeToString()
        ),
    )


async def forward(client: Client, env: ttrpc_events.Envelope) -> None:
    """One Events/Forward call through OUR ttrpc client, as a shim makes it."""
    await client.call(
        EVENTS_SERVICE,
        FORWARD_METHOD,
        ttrpc_events.ForwardRequest(envelope=env),
        empty_pb2.Empty,
        timeout=WAIT,
        metadata={NAMESPACE_KEY: env.namespace},
    )


async def connect(containerd: PrivateContainerd) -> Client:
    return await Client.connect(str(containerd.ttrpc_address), timeout=WAIT)


class _Ended(Exception):
    """A subscriber's stream ended (or failed) before the expected event came."""


class _Subscriber(Generic[T]):
    """What both subscribers share: ``live`` once a probe came, the other events queued."""

    source = "subscriber"

    def __init__(self) -> None:
        self.live = asyncio.Event()
        self._queue: asyncio.Queue[T | BaseException] = asyncio.Queue()

    async def next(self) -> T:
        """The next non-probe event; AssertionError if none comes within WAIT."""
        try:
            item = await asyncio.wait_for(self._queue.get(), WAIT)
        except TimeoutError:
            raise AssertionError(f"no event from {self.source} within {WAIT}s") from None
        if isinstance(item, BaseException):
            raise item
        return item


class GrpcSubscription(_Subscriber[grpc_events.Envelope]):
    """containerd's gRPC Events/Subscribe stream; probes are set aside, the rest queued."""

    source = "Subscribe"

    def __init__(self, containerd: PrivateContainerd, namespace: str, filters: Sequence[str]):
        super().__init__()
        self._channel = grpc.aio.insecure_channel(f"unix://{containerd.address}")
        stub = events_pb2_grpc.EventsStub(self._channel)
        request = grpc_events.SubscribeRequest(
            filters=[*filters, selectors(namespace, f"topic=={quote(PROBE_TOPIC)}")]
        )
        self._call = stub.Subscribe(request, metadata=((GRPC_NAMESPACE_KEY, namespace),))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for env in self._call:
                if env.topic == PROBE_TOPIC:
                    self.live.set()
                else:
                    self._queue.put_nowait(env)
            self._queue.put_nowait(_Ended("containerd ended the Subscribe stream"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # grpc.aio.AioRpcError and friends: hand it to the test
            self._queue.put_nowait(_Ended(f"Subscribe failed: {exc!r}"))

    async def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._channel.close()


class CtrEvents(_Subscriber[tuple[str, dict[str, Any]]]):
    """``ctr events <filters>`` as a child process; each line is ``<time> <ns> <topic> <json>``.

    ``ctr`` decodes the Any with containerd's type registry and prints it as Go JSON, so what
    it prints is containerd's own reading of our bytes.
    """

    source = "ctr events"

    def __init__(self, proc: asyncio.subprocess.Process, namespace: str) -> None:
        super().__init__()
        self._proc = proc
        self._namespace = namespace
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, containerd: PrivateContainerd, namespace: str, filters: Sequence[str]
    ) -> CtrEvents:
        probe = selectors(namespace, f"topic=={quote(PROBE_TOPIC)}")
        proc = await asyncio.create_subprocess_exec(
            str(containerd.ctr_bin),
            "--address",
            str(containerd.address),
            "events",
            *filters,
            probe,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc, namespace)

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        marker = f" {self._namespace} "
        while line := (await self._proc.stdout.readline()).decode(errors="replace"):
            _, found, rest = line.partition(marker)
            if not found:
                continue
            topic, _, body = rest.strip().partition(" ")
            if topic == PROBE_TOPIC:
                self.live.set()
            else:
                self._queue.put_nowait((topic, json.loads(body)))
        stderr = b"" if self._proc.stderr is None else await self._proc.stderr.read()
        self._queue.put_nowait(_Ended(f"ctr events ended: {stderr.decode(errors='replace')}"))

    async def close(self) -> None:
        if self._proc.returncode is None:
            self._proc.terminate()
        try:
            await asyncio.wait_for(self._proc.wait(), WAIT)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, _Ended):
            await self._reader


async def prove_subscribed(
    client: Client, namespace: str, *subscribers: GrpcSubscription | CtrEvents
) -> None:
    """Forward probes until every subscriber has received one (bounded by WAIT).

    Only then is containerd known to have registered each subscription, so an event sent
    afterwards cannot be missed for having been sent too early.
    """
    waits = [asyncio.create_task(s.live.wait()) for s in subscribers]
    try:
        async with asyncio.timeout(WAIT):
            count = 0
            while not all(s.live.is_set() for s in subscribers):
                count += 1
                probe = task_pb2.TaskOOM(container_id=f"probe-{count}")
                await forward(client, envelope(namespace, PROBE_TOPIC, probe))
                await asyncio.wait(waits, timeout=PROBE_PERIOD)
    except TimeoutError:
        raise AssertionError(f"subscriptions not live after {WAIT}s of probes") from None
    finally:
        for wait in waits:
            wait.cancel()


# --------------------------------------------------------------------- tests


def test_forward_is_observed_through_subscribe_and_ctr(
    containerd: PrivateContainerd, ns: str
) -> None:
    asyncio.run(_forward_is_observed(containerd, ns))


async def _forward_is_observed(containerd: PrivateContainerd, ns: str) -> None:
    exit_event = task_pb2.TaskExit(
        container_id="peer-c1", id="peer-exec-1", pid=4242, exit_status=137, exited_at=EXITED_AT
    )
    # event.container_id only matches when containerd decoded our Any itself.
    wanted = selectors(ns, 'topic=="/tasks/exit"', f"event.container_id=={quote('peer-c1')}")
    sub = GrpcSubscription(containerd, ns, [wanted])
    ctr = await CtrEvents.start(containerd, ns, [wanted])
    client = await connect(containerd)
    try:
        await prove_subscribed(client, ns, sub, ctr)
        sent = envelope(ns, "/tasks/exit", exit_event, type_url="containerd.events.TaskExit")
        await forward(client, sent)

        got = await sub.next()
        assert got.namespace == ns
        assert got.topic == "/tasks/exit"
        assert got.timestamp == sent.timestamp
        assert got.event.type_url == "containerd.events.TaskExit"
        decoded = task_pb2.TaskExit.FromString(got.event.value)
        assert decoded.container_id == "peer-c1"
        assert decoded.id == "peer-exec-1"
        assert decoded.pid == 4242
        assert decoded.exit_status == 137
        assert decoded.exited_at == EXITED_AT
        assert decoded == exit_event

        topic, printed = await ctr.next()
        assert topic == "/tasks/exit"
        assert printed == {
            "container_id": "peer-c1",
            "id": "peer-exec-1",
            "pid": 4242,
            "exit_status": 137,
            "exited_at": go_rfc3339nano(EXITED_AT),
        }
    finally:
        await client.close()
        await ctr.close()
        await sub.close()


def test_invalid_envelopes_raise_containerds_error_as_ours(
    containerd: PrivateContainerd, ns: str
) -> None:
    asyncio.run(_invalid_envelopes(containerd, ns))


async def _invalid_envelopes(containerd: PrivateContainerd, ns: str) -> None:
    exit_event = task_pb2.TaskExit(container_id="peer-c2", id="peer-c2", pid=1)
    untimed = envelope(ns, "/tasks/exit", exit_event)
    untimed.ClearField("timestamp")
    cases = [
        (
            envelope("Bad Namespace!", "/tasks/exit", exit_event),
            'event envelope has invalid namespace: identifier "Bad Namespace!" must match',
        ),
        (
            envelope(ns, "tasks/exit", exit_event),
            "envelope topic \"tasks/exit\": must start with '/'",
        ),
        (
            # Absent, not zero: containerd reads an empty Timestamp as 1970, which it accepts.
            untimed,
            "timestamp must be set on forwarded event",
        ),
    ]
    client = await connect(containerd)
    try:
        for env, text in cases:
            try:
                await forward(client, env)
            except InvalidArgument as exc:
                assert type(exc) is InvalidArgument
                assert text in exc.message, exc.message
                assert exc.message.endswith("invalid argument"), exc.message
            else:
                raise AssertionError(f"containerd accepted {env}")
        # A rejected call leaves the connection usable.
        await forward(client, envelope(ns, "/tasks/exit", exit_event))
        assert not client.closed
    finally:
        await client.close()


def test_publisher_events_arrive_in_order(containerd: PrivateContainerd, ns: str) -> None:
    asyncio.run(_publisher_in_order(containerd, ns))


async def _publisher_in_order(containerd: PrivateContainerd, ns: str) -> None:
    cid = "peer-fake-task"
    published: list[tuple[str, str, Message]] = [
        (
            "/tasks/create",
            "containerd.events.TaskCreate",
            task_pb2.TaskCreate(
                container_id=cid,
                bundle=f"/run/bundles/{cid}",
                rootfs=[mount_pb2.Mount(type="overlay", source="overlay", options=["ro"])],
                io=task_pb2.TaskIO(stdout="/run/fifo/out", stderr="/run/fifo/err"),
                pid=777,
            ),
        ),
        (
            "/tasks/start",
            "containerd.events.TaskStart",
            task_pb2.TaskStart(container_id=cid, pid=777),
        ),
        (
            "/tasks/exit",
            "containerd.events.TaskExit",
            task_pb2.TaskExit(
                container_id=cid, id=cid, pid=777, exit_status=3, exited_at=EXITED_AT
            ),
        ),
        (
            "/tasks/delete",
            "containerd.events.TaskDelete",
            task_pb2.TaskDelete(
                container_id=cid, id=cid, pid=777, exit_status=3, exited_at=EXITED_AT
            ),
        ),
    ]
    wanted = selectors(ns, 'topic~="^/tasks/"', f"event.container_id=={quote(cid)}")
    sub = GrpcSubscription(containerd, ns, [wanted])
    publisher = Publisher(str(containerd.ttrpc_address), ns, call_timeout=WAIT)
    try:
        client = await connect(containerd)
        try:
            await prove_subscribed(client, ns, sub)
        finally:
            await client.close()

        publisher.start()
        before = time.time_ns()
        for topic, _, event in published:
            publisher.publish(topic, event)
        after = time.time_ns()
        await publisher.close(timeout=WAIT)
        assert (publisher.sent, publisher.dropped, publisher.pending) == (4, 0, 0)

        received = [await sub.next() for _ in published]
        assert [env.topic for env in received] == [topic for topic, _, _ in published]
        for env, (topic, type_url, event) in zip(received, published, strict=True):
            assert env.namespace == ns, topic
            assert env.event.type_url == type_url
            assert type(event).FromString(env.event.value) == event, topic
            # Stamped by publish(), between our two clock readings, and kept by containerd.
            assert before <= env.timestamp.ToNanoseconds() <= after, topic
    finally:
        await publisher.close(timeout=WAIT)
        await sub.close()
