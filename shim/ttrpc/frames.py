"""The ttrpc frame layer, sans-IO: bytes in, frames out; never touches a socket.

A ttrpc connection is a sequence of frames, each a 10-byte big-endian header (payload length
u32, stream id u32, type u8, flags u8) followed by the payload. Any 10 bytes form a valid
header, so framing itself can never fail: the only frame-level fault is a payload longer than
4 MiB, which ttrpc discards and reports on that frame's stream while keeping the connection.
This module implements exactly that, and nothing about what the payload means (see
``connection.py`` for the per-side rules and ``messages.py`` for the payload codec).

The decoder never buffers an oversized payload: once such a header is seen, the following
bytes are counted off as they arrive, so a peer cannot make us hold more than one legal frame.
A frame within the limit is buffered only if the decoder's ``admit`` callback agrees (the
server's memory budget, ``limits.py``); a refused frame is skipped the same way and reported
as a :class:`RefusedFrame`. An admitted payload is received into a buffer of exactly its
announced length, allocated once, so the memory a frame holds is what it was admitted for.
A payload of ``MAP_THRESHOLD`` bytes or more gets an anonymous mapping of its own: its pages
are touched only as bytes arrive (half a frame costs half its size), and they go back to the
kernel the moment the frame is done or dropped, not to a heap that keeps them.
"""

from __future__ import annotations

import enum
import mmap
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from shim.errors import Code, ShimError

HEADER_SIZE = 10
MAX_PAYLOAD = 4 << 20
MAX_STREAM_ID = 0xFFFF_FFFF

MAP_THRESHOLD = 128 << 10

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
class RefusedFrame:
    """A frame within MAX_PAYLOAD that the decoder's ``admit`` callback refused; its bytes
    are being skipped, as an oversized frame's are."""

    stream_id: int
    type: int
    length: int


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer closed its side. ``truncated`` is True when a frame was cut off."""

    truncated: bool


FrameEvent = Frame | OversizedFrame | RefusedFrame | EndOfStream

# Whether a frame may be buffered: (stream id, type, payload length) -> admitted.
Admit = Callable[[int, int, int], bool]


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

    ``admit``, when given, is asked once per frame whose header announces a payload within
    ``max_payload``, before any of the payload is kept: False skips the frame (a
    :class:`RefusedFrame`). Bytes of a payload in progress go straight into its buffer (or
    are dropped, for a skipped one); other bytes received and not yet consumed by
    ``next_event`` are held as they came, so a caller that calls ``next_event`` until None
    after every ``receive_data`` (as the server does) holds no more than the last chunk.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, admit: Admit | None = None) -> None:
        self._max_payload = max_payload
        self._admit = admit
        self._pending: deque[memoryview] = deque()  # received, not yet consumed
        self._pending_size = 0
        self._head = bytearray()  # a header being received (fewer than HEADER_SIZE bytes)
        self._header: tuple[int, int, int, int] | None = None  # of the payload in _payload
        self._payload: bytearray | mmap.mmap | None = None  # exactly the announced length
        self._filled = 0
        self._skip = 0  # bytes of an oversized or refused payload still to discard
        self._eof = False
        self._eof_reported = False
        self.frames_admitted = 0  # frames whose payload buffer was allocated, ever

    @property
    def buffered(self) -> int:
        """Bytes held: received and not yet consumed, a partial header, and the buffer of
        the payload being received (its full length, allocated when it was admitted)."""
        payload = len(self._payload) if self._payload is not None else 0
        return self._pending_size + len(self._head) + payload

    @property
    def in_frame(self) -> bool:
        """True while an admitted frame's payload is only partly received."""
        return self._payload is not None

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
        self._pending.append(memoryview(data))
        self._pending_size += len(data)
        # Bytes of the frame in progress go where they belong at once: into its payload
        # buffer, or nowhere when it is being skipped.
        if self._skip:
            self._skip -= self._drop(self._skip)
        elif self._payload is not None:
            self._fill()

    def next_event(self) -> FrameEvent | None:
        """The next complete frame, oversize or refusal report, or end; None when more bytes
        are needed."""
        if self._skip:
            self._skip -= self._drop(self._skip)
            if self._skip:
                return self._end_or_none()
        if self._payload is None:
            self._head += self._take(HEADER_SIZE - len(self._head))
            if len(self._head) < HEADER_SIZE:
                return self._end_or_none()
            length, stream_id, type_, flags = _HEADER.unpack(self._head)
            self._head.clear()
            refused: FrameEvent | None = None
            if length > self._max_payload:
                refused = OversizedFrame(stream_id=stream_id, type=type_, length=length)
            elif self._admit is not None and not self._admit(stream_id, type_, length):
                refused = RefusedFrame(stream_id=stream_id, type=type_, length=length)
            if refused is not None:
                # Report now, skip as bytes arrive: the answer need not wait for the junk.
                self._skip = length - self._drop(length)
                return refused
            self._header = (length, stream_id, type_, flags)
            self._payload = mmap.mmap(-1, length) if length >= MAP_THRESHOLD else bytearray(length)
            self._filled = 0
            self.frames_admitted += 1
        assert self._header is not None
        self._fill()
        length, stream_id, type_, flags = self._header
        if self._filled < length:
            return self._end_or_none()
        payload = bytes(self._payload)
        self.close()
        return Frame(stream_id=stream_id, type=type_, flags=flags, payload=payload)

    def close(self) -> None:
        """Release the buffer of a frame in progress at once (the connection is gone)."""
        buffer, self._payload, self._header = self._payload, None, None
        if isinstance(buffer, mmap.mmap):
            buffer.close()

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes from the pending chunks (for headers: n <= HEADER_SIZE)."""
        out = bytearray()
        while n > 0 and self._pending:
            chunk = self._pending[0]
            part = chunk[:n]
            out += part
            n -= len(part)
            self._consumed(len(part))
        return bytes(out)

    def _drop(self, n: int) -> int:
        """Discard up to ``n`` pending bytes; returns how many were discarded."""
        dropped = 0
        while dropped < n and self._pending:
            dropped += self._consumed(n - dropped)
        return dropped

    def _fill(self) -> None:
        """Copy pending bytes into the payload buffer, up to its length."""
        assert self._payload is not None
        target = memoryview(self._payload)
        while self._filled < len(target) and self._pending:
            chunk = self._pending[0]
            n = min(len(chunk), len(target) - self._filled)
            target[self._filled : self._filled + n] = chunk[:n]
            self._filled += n
            self._consumed(n)
        target.release()

    def _consumed(self, n: int) -> int:
        """Remove up to ``n`` bytes from the first pending chunk; returns how many."""
        chunk = self._pending[0]
        n = min(n, len(chunk))
        if n == len(chunk):
            self._pending.popleft()
        else:
            self._pending[0] = chunk[n:]
        self._pending_size -= n
        return n

    def _end_or_none(self) -> EndOfStream | None:
        if not self._eof or self._eof_reported:
            return None
        self._eof_reported = True
        truncated = (
            bool(self._pending) or bool(self._head) or self._payload is not None or self._skip > 0
        )
        return EndOfStream(truncated=truncated)
