"""The ttrpc frame layer, sans-IO: bytes in, frames out; never touches a socket.

A ttrpc connection is a sequence of frames, each a 10-byte big-endian header (payload length
u32, stream id u32, type u8, flags u8) followed by the payload. Any 10 bytes form a valid
header, so framing itself can never fail: the only frame-level fault is a payload longer than
4 MiB, which ttrpc discards and reports on that frame's stream while keeping the connection.
This module implements exactly that, and nothing about what the payload means (see
``connection.py`` for the per-side rules and ``messages.py`` for the payload codec).

The decoder never buffers an oversized payload: once such a header is seen, the following
bytes are counted off as they arrive, so a peer cannot make us hold more than one legal frame.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from shim.errors import Code, ShimError

HEADER_SIZE = 10
MAX_PAYLOAD = 4 << 20
MAX_STREAM_ID = 0xFFFF_FFFF

_HEADER = struct.Struct(">IIBB")


class ProtocolError(ShimError):
    """The one exception the ttrpc codec raises, whoever is at fault.

    It is a :class:`ShimError` so that, should it reach an RPC boundary, it maps to a status
    code like every other expected failure (INVALID_ARGUMENT unless the instance says
    otherwise, e.g. RESOURCE_EXHAUSTED for a message too large to send). ``remote`` tells
    whose fault it was: True when the peer's bytes were bad, False when our own caller asked
    for something the protocol cannot express.
    """

    code = Code.INVALID_ARGUMENT

    def __init__(self, message: str, *, remote: bool, code: Code | None = None) -> None:
        super().__init__(message)
        self.remote = remote
        if code is not None:
            self.code = code


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame. ``type`` is an int, not a FrameType: unknown types must be
    passed up intact so the connection layer can ignore them (forward compatibility)."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose payload exceeded MAX_PAYLOAD; its bytes are being skipped."""

    stream_id: int
    type: int
    length: int


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer closed its side. ``truncated`` is True when a frame was cut off."""

    truncated: bool


FrameEvent = Frame | OversizedFrame | EndOfStream


def encode_header(length: int, stream_id: int, type_: int, flags: int = 0) -> bytes:
    """Pack a header; raises ProtocolError (local) when a field does not fit its width."""
    if not 0 <= length <= MAX_STREAM_ID:
        raise ProtocolError(f"frame length {length} out of range", remote=False)
    if not 0 <= stream_id <= MAX_STREAM_ID:
        raise ProtocolError(f"stream id {stream_id} out of range", remote=False)
    if not (0 <= type_ <= 0xFF and 0 <= flags <= 0xFF):
        raise ProtocolError(f"frame type {type_} / flags {flags} out of range", remote=False)
    return _HEADER.pack(length, stream_id, type_, flags)


def encode_frame(
    stream_id: int, type_: int, payload: bytes, flags: int = 0, *, max_payload: int = MAX_PAYLOAD
) -> bytes:
    """Header plus payload, ready for the wire.

    Raises ProtocolError (local, RESOURCE_EXHAUSTED) when the payload is over the 4 MiB limit:
    the peer would discard it anyway, so we refuse before wasting the bandwidth.
    """
    if len(payload) > max_payload:
        raise ProtocolError(
            f"message length {len(payload)} exceeds maximum message size of {max_payload}",
            remote=False,
            code=Code.RESOURCE_EXHAUSTED,
        )
    return encode_header(len(payload), stream_id, type_, flags) + payload


class FrameDecoder:
    """Turns a byte stream into frames, h11-style: ``receive_data`` then ``next_event``.

    ``receive_data(b"")`` signals end of input; after that ``next_event`` returns the
    remaining frames and then a single :class:`EndOfStream`, then None forever.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._max_payload = max_payload
        self._buffer = bytearray()
        self._header: tuple[int, int, int, int] | None = None
        self._skip = 0  # bytes of an oversized payload still to discard
        self._eof = False
        self._eof_reported = False

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for the rest of a frame (never more than one legal frame)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; an empty ``data`` means the peer closed.

        Raises ProtocolError (local) if called with data after the end was signalled.
        """
        if self._eof:
            if data:
                raise ProtocolError("data received after end of stream", remote=False)
            return
        if not data:
            self._eof = True
            return
        view = memoryview(data)
        if self._skip:
            dropped = min(self._skip, len(view))
            self._skip -= dropped
            view = view[dropped:]
        self._buffer += view

    def next_event(self) -> FrameEvent | None:
        """The next complete frame, oversize report or end; None when more bytes are needed."""
        if self._skip:
            dropped = min(self._skip, len(self._buffer))
            del self._buffer[:dropped]
            self._skip -= dropped
            if self._skip:
                return self._end_or_none()
        if self._header is None:
            if len(self._buffer) < HEADER_SIZE:
                return self._end_or_none()
            header = _HEADER.unpack_from(self._buffer)
            del self._buffer[:HEADER_SIZE]
            length, stream_id, type_, _flags = header
            if length > self._max_payload:
                # Report now, skip as bytes arrive: the answer need not wait for the junk.
                self._skip = length
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                return OversizedFrame(stream_id=stream_id, type=type_, length=length)
            self._header = header
        length, stream_id, type_, flags = self._header
        if len(self._buffer) < length:
            return self._end_or_none()
        payload = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._header = None
        return Frame(stream_id=stream_id, type=type_, flags=flags, payload=payload)

    def _end_or_none(self) -> EndOfStream | None:
        if not self._eof or self._eof_reported:
            return None
        self._eof_reported = True
        truncated = bool(self._buffer) or self._header is not None or self._skip > 0
        return EndOfStream(truncated=truncated)
