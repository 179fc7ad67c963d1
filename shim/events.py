"""Task events to containerd: an ordered, bounded, retrying publisher.

The task service calls :meth:`Publisher.publish` at the moment something happens; that call
only stamps the time and queues, so a slow or absent containerd can never stall a task RPC.
One background task forwards the queue, in order, as ``Events/Forward`` calls to containerd's
ttrpc socket (the ``TTRPC_ADDRESS`` containerd gives the shim, which serve.py passes in). Order
matters: containerd must see TaskStart before TaskExit.

Failures: connection-type errors (Unavailable, DeadlineExceeded, OSError) are retried with
exponential backoff on a fresh connection, up to ``max_attempts``; then the event is dropped
with a log line, as containerd's own shim publisher drops after five requeues. Any other
status means containerd rejected the event itself, so it is dropped at once. When the queue
is full the OLDEST event is dropped: a fresh exit matters more than a stale create.

The ``Any`` in the envelope carries the bare proto name as its type_url (for example
``containerd.events.TaskExit``), which is what containerd's typeurl registry resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from shim.api.containerd.services.ttrpc.events.v1 import events_pb2
from shim.errors import DeadlineExceeded, ShimError, Unavailable
from shim.ttrpc.client import Client
from shim.ttrpc.messages import NAMESPACE_KEY

log = logging.getLogger(__name__)

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
FORWARD_METHOD = "Forward"

_RETRYABLE = (Unavailable, DeadlineExceeded, OSError)


@dataclass(frozen=True, slots=True)
class _Item:
    """An event as queued: already encoded, so a later mutation of the message is harmless."""

    timestamp_ns: int
    topic: str
    type_url: str
    value: bytes


class Publisher:
    """Forwards events for one namespace to containerd at ``address`` (a socket path).

    Create it, call :meth:`start` on the running loop, :meth:`publish` freely, and
    ``await close()`` at exit to flush what is left within a deadline.
    """

    def __init__(
        self,
        address: str,
        namespace: str,
        *,
        max_queue: int = 2048,
        max_attempts: int = 6,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        call_timeout: float = 5.0,
    ) -> None:
        if max_queue < 1 or max_attempts < 1:
            raise ValueError("max_queue and max_attempts must be at least 1")
        self.address = address
        self.namespace = namespace
        self._max_queue = max_queue
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._call_timeout = call_timeout
        self._queue: deque[_Item] = deque()
        self._current: _Item | None = None  # taken off the queue, being delivered
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self._closing = False
        self.sent = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Events queued and not yet taken by the sender."""
        return len(self._queue)

    def start(self) -> None:
        """Start the sender on the running loop (call from a coroutine). Idempotent."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = self._loop.create_task(self._run(), name="event-publisher")

    def publish(self, topic: str, event: Message) -> None:
        """Queue ``event`` under ``topic`` for forwarding. Never blocks, never raises.

        Safe to call from another thread once started (the item is handed to the loop).
        """
        try:
            item = _Item(
                timestamp_ns=time.time_ns(),
                topic=topic,
                type_url=event.DESCRIPTOR.full_name,
                value=event.SerializeToString(),
            )
            loop = self._loop
            if loop is not None and threading.get_ident() != self._loop_thread:
                loop.call_soon_threadsafe(self._enqueue, item)
            else:
                self._enqueue(item)
        except Exception:
            log.exception("events: cannot publish %s; event dropped", topic)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop taking events, flush the queue for up to ``timeout`` seconds, disconnect."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:  # the sender should never fail; do not let close fail either
                log.exception("events: publisher failed")
        lost = len(self._queue) + (self._current is not None)
        if lost:
            log.error("events: %d event(s) not delivered before close", lost)
            self.dropped += lost
            self._queue.clear()
            self._current = None
        await self._disconnect()

    def _enqueue(self, item: _Item) -> None:
        if self._closing:
            log.error("events: publisher closed; dropping %s", item.topic)
            self.dropped += 1
            return
        if len(self._queue) >= self._max_queue:
            old = self._queue.popleft()
            self.dropped += 1
            log.error("events: queue full (%d); dropping oldest %s", self._max_queue, old.topic)
        self._queue.append(item)
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            self._current = self._queue.popleft()
            await self._deliver(self._current)
            self._current = None

    async def _deliver(self, item: _Item) -> None:
        request = self._forward_request(item)
        for attempt in range(1, self._max_attempts + 1):
            try:
                client = await self._connect()
                await client.call(
                    EVENTS_SERVICE,
                    FORWARD_METHOD,
                    request,
                    empty_pb2.Empty,
                    timeout=self._call_timeout,
                    metadata={NAMESPACE_KEY: self.namespace},
                )
            except _RETRYABLE as exc:
                await self._disconnect()
                if attempt == self._max_attempts:
                    self.dropped += 1
                    log.error("events: dropping %s after %d attempts: %s", item.topic, attempt, exc)
                    return
                delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                log.warning(
                    "events: forwarding %s failed (%s); retry in %.2fs", item.topic, exc, delay
                )
                await asyncio.sleep(delay)
            except ShimError as exc:
                self.dropped += 1
                log.error("events: containerd rejected %s: %s", item.topic, exc)
                return
            else:
                self.sent += 1
                return

    def _forward_request(self, item: _Item) -> events_pb2.ForwardRequest:
        seconds, nanos = divmod(item.timestamp_ns, 1_000_000_000)
        return events_pb2.ForwardRequest(
            envelope=events_pb2.Envelope(
                timestamp=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
                namespace=self.namespace,
                topic=item.topic,
                event=any_pb2.Any(type_url=item.type_url, value=item.value),
            )
        )

    async def _connect(self) -> Client:
        if self._client is None or self._client.closed:
            await self._disconnect()
            self._client = await Client.connect(self.address, timeout=self._call_timeout)
        return self._client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
