"""An asyncio ttrpc client: one unix connection, many concurrent unary calls.

Calls share the connection, each on its own odd stream id; one reader task routes answers
to their callers. A non-OK status is raised as the matching :mod:`shim.errors` class, so a
caller handles NotFound from containerd the same way the server raised it. When the
connection drops, every pending call fails with Unavailable and so does every later call:
reconnecting is the caller's decision (the event publisher does it with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from shim.errors import DeadlineExceeded, Internal, InvalidArgument, Unavailable, from_status
from shim.ttrpc.connection import ClientConnection, ConnectionClosed, ResponseReceived
from shim.ttrpc.frames import MAX_PAYLOAD, ProtocolError
from shim.ttrpc.messages import Request, Response, metadata_pairs

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024

M = TypeVar("M", bound=Message)


def socket_path(address: str | os.PathLike[str]) -> str:
    """A dialable path from a ttrpc address: ``unix:///p`` and ``/p`` both give ``/p``.

    ``TTRPC_ADDRESS`` comes without the scheme, a shim's own address with it; accept both.
    """
    address = os.fspath(address)
    if address.startswith("unix://"):
        return address[len("unix://") :]
    if "://" in address:
        raise InvalidArgument(f"unsupported ttrpc address {address!r}: only unix sockets")
    return address


class Client:
    """A connected ttrpc client. Create with ``await Client.connect(path)``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._proto = ClientConnection(max_payload)
        self._waiters: dict[int, asyncio.Future[Response]] = {}
        self._closed_reason: str | None = None
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls, address: str | os.PathLike[str], *, timeout: float | None = None
    ) -> Client:
        """Dial a unix socket path (or ``unix://`` address).

        Raises Unavailable when nothing accepts there (missing socket, refused, timed out).
        """
        path = socket_path(address)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"ttrpc: cannot connect to {path}: {exc}") from exc
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str | Sequence[str]] | None = None,
    ) -> M:
        """Call ``/service/method`` and return its decoded answer.

        ``timeout`` (seconds) is sent as ``timeout_nano`` so the server gives up too, and
        bounds our own wait: DeadlineExceeded is raised when it passes. Raises the
        :mod:`shim.errors` class of any non-OK status; Unavailable when the connection is or
        becomes closed; ResourceExhausted for a request over the 4 MiB frame limit.
        """
        if self._closed_reason is not None:
            raise Unavailable(self._closed_reason)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        wire = Request(
            service=service,
            method=method,
            payload=request.SerializeToString(),
            timeout_nano=0 if timeout is None else max(1, int(timeout * 1e9)),
            metadata=metadata_pairs(metadata),
        )
        try:
            stream_id, data = self._proto.send_request(wire)
        except ProtocolError as exc:
            raise from_status(exc.code, exc.message) from exc
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiters[stream_id] = waiter
        try:
            self._writer.write(data)
            async with asyncio.timeout_at(deadline):
                await self._writer.drain()
                response = await waiter
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"ttrpc: /{service}/{method}: context deadline exceeded"
            ) from exc
        except (ConnectionError, OSError) as exc:
            self._shut(f"ttrpc: connection lost: {exc}")
            raise Unavailable(self._closed_reason or "ttrpc: closed") from exc
        finally:
            self._waiters.pop(stream_id, None)
            self._proto.forget(stream_id)
        if not response.ok:
            raise from_status(response.code, response.message)
        try:
            return response_type.FromString(response.payload)
        except Exception as exc:  # protobuf's DecodeError and relatives
            raise Internal(f"ttrpc: cannot decode {response_type.__name__}: {exc}") from exc

    async def close(self) -> None:
        """Close the connection; pending calls fail with Unavailable."""
        self._shut("ttrpc: client closed")
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        reason = "ttrpc: connection closed by server"
        try:
            while True:
                try:
                    data = await self._reader.read(_READ_SIZE)
                except (ConnectionError, OSError) as exc:
                    reason = f"ttrpc: connection lost: {exc}"
                    data = b""
                self._proto.receive_data(data)
                while (event := self._proto.next_event()) is not None:
                    if isinstance(event, ConnectionClosed):
                        self._shut(reason)
                        return
                    if isinstance(event, ResponseReceived):
                        waiter = self._waiters.pop(event.stream_id, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(event.response)
        except asyncio.CancelledError:
            self._shut("ttrpc: client closed")
            raise
        except Exception as exc:  # a bug here must not leave callers hanging forever
            log.exception("ttrpc: client read loop failed")
            self._shut(f"ttrpc: client failed: {exc}")

    def _shut(self, reason: str) -> None:
        """Mark closed (first reason wins) and fail every pending call with Unavailable."""
        if self._closed_reason is None:
            self._closed_reason = reason
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(Unavailable(self._closed_reason))
        self._waiters.clear()
        if not self._writer.is_closing():
            self._writer.close()
