"""An asyncio ttrpc server on unix sockets: accept, check the peer, dispatch, answer.

Protocol rules live in :mod:`shim.ttrpc.connection`; this module is the thin transport around
them plus the dispatch table. Each request runs in its own task, so a Wait that blocks for
minutes never holds up a Start on the same connection (ctr does exactly that).

Every failed call is answered in one place, ``Server._dispatch``, with the status
:func:`shim.errors.to_status` gives the exception: a handler's
:class:`~shim.errors.ShimError` becomes its code and message, any other exception becomes
UNKNOWN with its text and is logged there once with its traceback. The server's own refusals
are shim.errors classes raised on the same path: Unavailable during shutdown, Unimplemented
for an unknown service or method, InvalidArgument for a request message that does not decode,
and DeadlineExceeded when the caller's ``timeout_nano`` passes (the handler is cancelled).
Rejected frames (:class:`~shim.ttrpc.connection.StreamError`) come with their status from
the connection layer and are answered as they are.

Memory (``limits.py``): every frame is charged to its connection and to the server's budget
before it is buffered, and refused with RESOURCE_EXHAUSTED when it does not fit; a call's
charge is returned once its answer has been handed to the socket. Connections beyond
``max_connections`` are closed as they are accepted. Nothing waits on a peer for ever: a frame
must arrive whole, and the answers already written must be taken by the peer, within
``frame_timeout`` seconds, or the connection is dropped. While more than 64 KiB of answers
wait to be sent, the connection acts on nothing more and reads nothing more, so what a peer
sends without reading cannot pile up as answers either.

Handlers are cancelled when their connection goes away (as ttrpc-go cancels the request
context) and when a shutdown's grace period runs out, so they must be cancellation-safe;
a handler that must finish a critical section should ``asyncio.shield`` it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from shim.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ShimError,
    Unavailable,
    Unimplemented,
)
from shim.ttrpc.connection import ConnectionClosed, RequestReceived, ServerConnection, StreamError
from shim.ttrpc.frames import MAX_PAYLOAD
from shim.ttrpc.limits import Budget, Limits
from shim.ttrpc.messages import NAMESPACE_KEY, Request, Response, metadata_dict

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
_WRITE_HIGH = 64 * 1024  # answers waiting to be sent before the read loop stops acting


class _Progress(enum.Enum):
    """How far ``_ServerConn._process_events`` got."""

    IDLE = "idle"  # every complete event acted on: read more
    BACKLOG = "backlog"  # answers are piling up: wait for the peer to take them first
    CLOSED = "closed"  # the peer closed its side


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """SO_PEERCRED of a connected client: who was on the other end when it connected."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler may know about its call besides the request message.

    ``deadline`` is on the event loop's clock (``loop.time()``), None when the caller set no
    timeout. Metadata keys are lower-case; each maps to the values in arrival order.
    """

    service: str
    method: str
    metadata: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    deadline: float | None = None
    peer: PeerCredentials | None = None

    def get(self, key: str) -> str | None:
        """The first value of metadata ``key`` (case-insensitive), or None."""
        values = self.metadata.get(key.lower())
        return values[0] if values else None

    @property
    def namespace(self) -> str | None:
        """The containerd namespace of the call (``containerd-namespace-ttrpc``)."""
        return self.get(NAMESPACE_KEY)


# What runs one ttrpc method: the decoded request and the call's context in, the reply out.
MethodHandler = Callable[[Any, CallContext], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class Method:
    """One dispatch-table entry. ``response_type``, when given, is checked on return."""

    handler: MethodHandler
    request_type: type[Message]
    response_type: type[Message] | None = None


MethodSpec = (
    Method
    | tuple[MethodHandler, type[Message]]
    | tuple[MethodHandler, type[Message], type[Message]]
)


def peer_credentials(sock: socket.socket | Any) -> PeerCredentials:
    """Read SO_PEERCRED from a connected unix socket (or asyncio's TransportSocket)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def same_user(peer: PeerCredentials) -> bool:
    """ttrpc's UnixSocketRequireSameUser: the peer's uid AND gid must equal our effective
    ones. There is no exception for root; containerd and its shims run as the same user."""
    return peer.uid == os.geteuid() and peer.gid == os.getegid()


class Server:
    """A ttrpc server: register services, ``start`` on a path or inherited socket, ``shutdown``."""

    def __init__(
        self,
        *,
        require_same_user: bool = True,
        max_payload: int = MAX_PAYLOAD,
        limits: Limits | None = None,
    ) -> None:
        self._require_same_user = require_same_user
        self._max_payload = max_payload
        self.limits = limits or Limits()
        self.budget = Budget(self.limits)
        self._methods: dict[tuple[str, str], Method] = {}
        self._services: set[str] = set()
        self._listeners: list[asyncio.AbstractServer] = []
        self._connections: set[_ServerConn] = set()
        self._shutting_down = False
        self._closed = asyncio.Event()

    def register_service(self, name: str, methods: Mapping[str, MethodSpec]) -> None:
        """Add service ``name`` (e.g. ``containerd.task.v2.Task``) with its methods.

        ``methods`` maps a bare method name to a :class:`Method` or a tuple
        ``(async handler, RequestType[, ResponseType])``. Raises ValueError on a duplicate.
        """
        if name in self._services:
            raise ValueError(f"duplicate service {name} registered")
        entries: dict[tuple[str, str], Method] = {}
        for method_name, spec in methods.items():
            entries[(name, method_name)] = spec if isinstance(spec, Method) else Method(*spec)
        self._services.add(name)
        self._methods.update(entries)

    async def start(self, path: str | None = None, *, sock: socket.socket | None = None) -> None:
        """Begin accepting on exactly one of: a filesystem path (bound and listened here), or an
        already-listening socket (the daemon's, which ``start`` bound before it forked the
        daemon). Returns once accepting; may be called again to serve several listeners."""
        if (path is None) == (sock is None):
            raise ValueError("give exactly one of path, sock")
        if self._shutting_down:
            raise RuntimeError("server is shut down")
        if sock is not None:
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError("ttrpc needs a unix stream socket")
            listener = await asyncio.start_unix_server(self._on_connection, sock=sock)
        else:
            listener = await asyncio.start_unix_server(self._on_connection, path=path)
        self._listeners.append(listener)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, let calls in flight finish for up to ``grace`` seconds (new calls
        on open connections get UNAVAILABLE meanwhile), cancel the rest, close every
        connection. Do not await this from inside a handler: it would wait for itself."""
        if self._shutting_down:
            await self._closed.wait()
            return
        self._shutting_down = True
        for listener in self._listeners:
            listener.close()
        inflight = {task for conn in self._connections for task in conn.calls}
        if inflight:
            _, late = await asyncio.wait(inflight, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("ttrpc: cancelled %d call(s) still running at shutdown", len(late))
                await asyncio.gather(*late, return_exceptions=True)
        await asyncio.gather(*(conn.close() for conn in list(self._connections)))
        self._closed.set()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer: PeerCredentials | None = None
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
        except OSError as exc:
            log.warning("ttrpc: cannot read peer credentials: %s", exc)
        if self._require_same_user and (peer is None or not same_user(peer)):
            log.error("ttrpc: refusing connection from %s: credentials differ from ours", peer)
            writer.close()
            return
        if self._shutting_down:
            writer.close()
            return
        if len(self._connections) >= self.limits.max_connections:
            log.warning(
                "ttrpc: closing a new connection from %s: %d connections are open, the limit",
                peer,
                len(self._connections),
            )
            writer.close()
            return
        conn = _ServerConn(self, reader, writer, peer)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    async def _dispatch(self, request: Request, peer: PeerCredentials | None) -> Response:
        """The answer to ``request``: its handler's reply, or the status of what failed."""
        try:
            return Response(payload=await self._run(request, peer))
        except Exception as exc:
            if not isinstance(exc, ShimError):
                # The one place an unexpected failure is logged, with its traceback.
                log.error("ttrpc: /%s/%s failed", request.service, request.method, exc_info=exc)
            return Response.from_error(exc)

    async def _run(self, request: Request, peer: PeerCredentials | None) -> bytes:
        """Decode, call the handler within the caller's deadline, encode its reply.

        Raises the server's own refusals as shim.errors classes (Unavailable while shutting
        down, Unimplemented, InvalidArgument for an undecodable request, DeadlineExceeded),
        and whatever the handler raised.
        """
        if self._shutting_down:
            raise Unavailable("ttrpc: server shutting down")
        method = self._methods.get((request.service, request.method))
        if method is None:
            missing = (
                f"method {request.method}"
                if request.service in self._services
                else f"service {request.service}"
            )
            raise Unimplemented(missing)
        try:
            message = method.request_type.FromString(request.payload)
        except Exception as exc:  # protobuf's DecodeError and relatives
            raise InvalidArgument(f"unmarshal argument: {exc}") from exc
        deadline = None
        if request.timeout_nano > 0:
            deadline = asyncio.get_running_loop().time() + request.timeout_nano / 1e9
        ctx = CallContext(
            service=request.service,
            method=request.method,
            metadata=metadata_dict(request.metadata),
            deadline=deadline,
            peer=peer,
        )
        timer = asyncio.timeout_at(deadline)
        try:
            async with timer:
                result = await method.handler(message, ctx)
        except TimeoutError as exc:
            if timer.expired():
                raise DeadlineExceeded("context deadline exceeded") from exc
            raise
        if method.response_type is not None and not isinstance(result, method.response_type):
            raise TypeError(
                f"handler returned {type(result).__name__}, "
                f"expected {method.response_type.__name__}"
            )
        if not isinstance(result, Message):
            raise TypeError(f"handler returned {type(result).__name__}, not a message")
        return result.SerializeToString()


class _ServerConn:
    """One accepted connection: a read loop feeding the sans-IO state, one task per call."""

    def __init__(
        self,
        server: Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCredentials | None,
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._peer = peer
        self._timeout = server.limits.frame_timeout
        self._proto = ServerConnection(server._max_payload, budget=server.budget)
        self.calls: set[asyncio.Task[None]] = set()
        self.finished = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # of the frame in progress
        frame = -1  # which frame the deadline is for
        try:
            while True:
                if not self._proto.in_frame:
                    deadline = None
                elif deadline is None or frame != self._proto.frames_admitted:
                    deadline = loop.time() + self._timeout
                    frame = self._proto.frames_admitted
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await self._reader.read(_READ_SIZE)
                except TimeoutError:
                    self._drop(f"a frame did not arrive whole within {self._timeout:g}s")
                    break
                except (ConnectionError, OSError):
                    data = b""
                self._proto.receive_data(data)
                if not await self._act():
                    break
        finally:
            # The client is gone (or we are closing): like ttrpc-go, cancel what it asked for.
            for task in list(self.calls):
                task.cancel()
            if self.calls:
                await asyncio.gather(*self.calls, return_exceptions=True)
            self._proto.close()  # every charge back to the server's budget
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                async with asyncio.timeout(self._timeout):  # unread answers: drop them
                    await self._writer.wait_closed()
            self._writer.transport.abort()
            self.finished.set()

    async def _act(self) -> bool:
        """Act on every complete event, pausing whenever more than _WRITE_HIGH bytes of
        answers wait to be sent until the peer has taken them. False once the connection is
        over (the peer closed, or left its answers unread past the deadline)."""
        while True:
            progress = self._process_events()
            if progress is _Progress.CLOSED:
                return False
            if not await self._drained():
                self._drop(f"the peer left our answers unread for {self._timeout:g}s")
                return False
            if progress is _Progress.IDLE:
                return True

    async def _drained(self) -> bool:
        """Wait (bounded) until the answers written so far have left; False if they did not."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._writer.drain()
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            pass  # the next read sees the end
        return True

    def _drop(self, reason: str) -> None:
        log.warning("ttrpc: dropping the connection from %s: %s", self._peer, reason)
        self._writer.transport.abort()

    def _process_events(self) -> _Progress:
        """Act on complete events until more bytes are needed (IDLE), the peer has closed
        (CLOSED), or the answers written wait over _WRITE_HIGH bytes (BACKLOG)."""
        while (event := self._proto.next_event()) is not None:
            if isinstance(event, ConnectionClosed):
                return _Progress.CLOSED
            if isinstance(event, StreamError):
                self._send(event.stream_id, Response(code=event.code, message=event.message))
            elif isinstance(event, RequestReceived):
                task = asyncio.create_task(self._call(event))
                self.calls.add(task)
                task.add_done_callback(self.calls.discard)
            if self._writer.transport.get_write_buffer_size() > _WRITE_HIGH:
                return _Progress.BACKLOG
        return _Progress.IDLE

    async def _call(self, event: RequestReceived) -> None:
        try:
            response = await self._server._dispatch(event.request, self._peer)
            self._send(event.stream_id, response)
            if not await self._drained():
                self._drop(f"the peer left our answers unread for {self._timeout:g}s")
        finally:
            self._proto.release(event.charge)

    def _send(self, stream_id: int, response: Response) -> None:
        data = self._proto.send_response(stream_id, response)
        if not self._writer.is_closing():
            self._writer.write(data)

    async def close(self) -> None:
        """Close the transport and wait for the read loop to see EOF and finish."""
        self._writer.close()
        await self.finished.wait()
