"""The two ends of a ttrpc connection, sans-IO: what each side accepts and what it answers.

:class:`ServerConnection` applies ttrpc's server rules to incoming frames and turns them into
events the transport acts on: a call to dispatch, or a status to send back on one stream
(the connection itself always survives; ttrpc has no connection-fatal frame). The rules,
as ttrpc-go enforces them:

- a frame with an even stream id           -> INVALID_ARGUMENT on that stream
- an oversized frame (over 4 MiB)           -> RESOURCE_EXHAUSTED on that stream, bytes skipped
- a frame over the memory caps (limits.py)  -> RESOURCE_EXHAUSTED on that stream, bytes skipped
- a Request whose id is not above the last  -> INVALID_ARGUMENT (ids cannot be reused)
- a Request that does not parse             -> INVALID_ARGUMENT
- a Data frame                              -> INVALID_ARGUMENT (no streaming calls here)
- a Response or unknown frame type          -> ignored, for forward compatibility

:class:`ClientConnection` allocates odd, increasing stream ids and matches responses to them; an
answer over the size limit becomes RESOURCE_EXHAUSTED, one that does not decode INTERNAL.

The server side also keeps the memory accounting of ``limits.py``: each frame is charged to
the connection and to the server's shared :class:`~shim.ttrpc.limits.Budget` before it is
buffered; a call's charge travels in its :class:`RequestReceived` and comes back through
:meth:`ServerConnection.release` once the answer has left; :meth:`ServerConnection.close`
returns whatever is still held.

These codes are decided here: each rule puts a shim.errors instance (InvalidArgument,
ResourceExhausted, Internal) into its event, and :func:`shim.errors.to_status` turns it into code
and message. A response too large to send is replaced the same way, by a RESOURCE_EXHAUSTED
answer. Nothing here raises on peer input; local misuse raises ProtocolError with
``remote=False`` (RESOURCE_EXHAUSTED for a request too large to send, UNAVAILABLE once the
stream ids run out, else INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from shim.errors import Code, Internal, InvalidArgument, ResourceExhausted, ShimError, to_status
from shim.ttrpc.frames import (
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    EndOfStream,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    ProtocolError,
    RefusedFrame,
    encode_frame,
)
from shim.ttrpc.limits import Budget, Limits
from shim.ttrpc.messages import (
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A well-formed call; the server must eventually answer it on ``stream_id``, then give
    ``charge`` back to :meth:`ServerConnection.release`."""

    stream_id: int
    request: Request
    charge: int = 0


@dataclass(frozen=True, slots=True)
class StreamError:
    """A rejected frame; the server must answer ``code``/``message`` on ``stream_id``."""

    stream_id: int
    code: Code
    message: str

    @classmethod
    def of(cls, stream_id: int, error: ShimError) -> StreamError:
        """The rejection of ``stream_id`` with ``error``'s status (see :func:`to_status`)."""
        code, message = to_status(error)
        return cls(stream_id, code, message)


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The answer to one of our calls (or a locally synthesised failure for it)."""

    stream_id: int
    response: Response


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side; ``truncated`` if it did so in the middle of a frame."""

    truncated: bool


ServerEvent = RequestReceived | StreamError | ConnectionClosed
ClientEvent = ResponseReceived | ConnectionClosed


def _too_large(length: int, limit: int) -> ResourceExhausted:
    """An incoming frame over the limit, in ttrpc-go's words (its grammar included)."""
    return ResourceExhausted(f"message length {length} exceed maximum message size of {limit}")


class ServerConnection:
    """Server-side protocol state of one connection: the last stream id, owed answers, and
    the bytes its frames hold (charged to ``budget``, the server's; a private one if None)."""

    def __init__(
        self,
        max_payload: int = MAX_PAYLOAD,
        *,
        limits: Limits | None = None,
        budget: Budget | None = None,
    ) -> None:
        self._limits = limits or (budget.limits if budget is not None else Limits())
        self._budget = budget or Budget(self._limits)
        self._decoder = FrameDecoder(max_payload, admit=self._admit)
        self._max_payload = max_payload
        self._last_stream_id = 0
        # Streams we owe an answer on. A Counter, because a bad client can make us owe
        # several answers on one id (a live call plus a rejected duplicate of it).
        self._owed: Counter[int] = Counter()
        self._held = 0  # bytes charged to this connection (the frame in progress + calls)
        self._receiving = 0  # the charge of the frame being received
        self._refusal: ShimError | None = None  # why the last refused frame was refused
        self._closed = False

    @property
    def last_stream_id(self) -> int:
        return self._last_stream_id

    @property
    def owed(self) -> int:
        """How many answers are outstanding (calls in flight plus rejections not yet sent)."""
        return sum(self._owed.values())

    @property
    def held(self) -> int:
        """Bytes charged to this connection and not yet released."""
        return self._held

    @property
    def in_frame(self) -> bool:
        """True while an admitted frame is only partly received (its deadline is running)."""
        return self._decoder.in_frame

    @property
    def frames_admitted(self) -> int:
        """How many frames have been admitted so far (tells one frame in progress from the
        next)."""
        return self._decoder.frames_admitted

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` when it closed. See FrameDecoder.receive_data."""
        self._decoder.receive_data(data)

    def next_event(self) -> ServerEvent | None:
        """The next thing the transport must act on, or None when more bytes are needed."""
        while True:
            event = self._decoder.next_event()
            if event is None:
                return None
            if isinstance(event, EndOfStream):
                return ConnectionClosed(truncated=event.truncated)
            charge = 0
            if isinstance(event, Frame):
                charge, self._receiving = self._receiving, 0
            result = self._classify(event)
            if isinstance(result, RequestReceived):
                result = RequestReceived(result.stream_id, result.request, charge)
            else:
                self.release(charge)
            if result is not None:
                if not isinstance(result, ConnectionClosed):
                    self._owed[result.stream_id] += 1
                return result

    def release(self, charge: int) -> None:
        """Give back a call's charge once its answer has left (nothing after ``close``)."""
        if self._closed or charge <= 0:
            return
        self._held -= charge
        self._budget.release(charge)

    def close(self) -> None:
        """The connection is gone: return everything it still holds to the budget."""
        if self._closed:
            return
        self._closed = True
        self._decoder.close()
        self._budget.release(self._held)
        self._held = self._receiving = 0

    def _admit(self, stream_id: int, type_: int, length: int) -> bool:
        """The decoder's gate: charge a frame before its payload is kept, or refuse it."""
        if self._closed:
            return False
        charge = self._budget.cost(length)
        limit = self._limits.connection_bytes
        if self._held + charge > limit:
            self._refusal = ResourceExhausted(
                f"ttrpc: a frame of {length} bytes would make this connection hold "
                f"{self._held + charge} bytes of unanswered requests, over its limit of {limit}"
            )
            return False
        if not self._budget.charge(charge, small=length <= self._limits.small_frame):
            self._refusal = ResourceExhausted(
                f"ttrpc: the shim already holds {self._budget.used} bytes of unanswered "
                f"requests; a frame of {length} bytes does not fit its limit of "
                f"{self._limits.server_bytes}"
            )
            return False
        self._held += charge
        self._receiving = charge
        return True

    def _classify(self, event: Frame | OversizedFrame | RefusedFrame) -> ServerEvent | None:
        sid = event.stream_id
        if isinstance(event, OversizedFrame):
            return StreamError.of(sid, _too_large(event.length, self._max_payload))
        if isinstance(event, RefusedFrame):
            refusal = self._refusal or ResourceExhausted("ttrpc: frame refused")
            self._refusal = None
            return StreamError.of(sid, refusal)
        if sid % 2 != 1:
            return StreamError.of(
                sid, InvalidArgument("StreamID must be odd for client initiated streams")
            )
        if event.type == FrameType.DATA:
            return StreamError.of(sid, InvalidArgument("StreamID is no longer active"))
        if event.type != FrameType.REQUEST:
            return None
        if sid <= self._last_stream_id:
            return StreamError.of(
                sid, InvalidArgument("StreamID cannot be re-used and must increment")
            )
        self._last_stream_id = sid
        try:
            request = decode_request(event.payload)
        except ProtocolError as exc:  # remote, INVALID_ARGUMENT
            return StreamError.of(sid, exc)
        return RequestReceived(sid, request)

    def send_response(self, stream_id: int, response: Response) -> bytes:
        """The bytes answering ``stream_id``.

        A response too large for one frame is replaced by a RESOURCE_EXHAUSTED status, so
        the caller still hears back. Raises ProtocolError (local) if no answer is owed on
        that stream; the state is then unchanged.
        """
        if self._owed[stream_id] <= 0:
            raise ProtocolError(f"no request to answer on stream {stream_id}", remote=False)
        payload = encode_response(response)
        if len(payload) > self._max_payload:
            too_large = ResourceExhausted(
                f"response of {len(payload)} bytes exceeds maximum message size "
                f"of {self._max_payload}"
            )
            payload = encode_response(Response.from_error(too_large))
        data = encode_frame(stream_id, FrameType.RESPONSE, payload)
        self._owed[stream_id] -= 1
        if self._owed[stream_id] == 0:
            del self._owed[stream_id]
        return data


class ClientConnection:
    """Client-side protocol state: stream id allocation and the set of calls awaiting answers."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._decoder = FrameDecoder(max_payload)
        self._max_payload = max_payload
        self._next_stream_id = 1
        self._pending: set[int] = set()

    @property
    def pending(self) -> frozenset[int]:
        return frozenset(self._pending)

    def send_request(self, request: Request) -> tuple[int, bytes]:
        """Allocate the next odd stream id and encode ``request`` on it.

        Raises ProtocolError (local): RESOURCE_EXHAUSTED when the encoded request is over the
        size limit, UNAVAILABLE once the 32-bit id space is used up (reconnect then). No id
        is consumed when it raises.
        """
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise ProtocolError(
                "stream ids exhausted on this connection", remote=False, code=Code.UNAVAILABLE
            )
        data = encode_frame(
            stream_id, FrameType.REQUEST, encode_request(request), max_payload=self._max_payload
        )
        self._next_stream_id += 2
        self._pending.add(stream_id)
        return stream_id, data

    def forget(self, stream_id: int) -> None:
        """Stop waiting for ``stream_id`` (timed out or cancelled); a late answer is dropped."""
        self._pending.discard(stream_id)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server; ``b""`` when it closed. See FrameDecoder.receive_data."""
        self._decoder.receive_data(data)

    def next_event(self) -> ClientEvent | None:
        """The next answer to a pending call, or the close; None when more bytes are needed.

        Frames for streams we are not waiting on, and frames that are not Responses, are
        dropped: nobody could use them.
        """
        while True:
            event = self._decoder.next_event()
            if event is None:
                return None
            if isinstance(event, EndOfStream):
                return ConnectionClosed(truncated=event.truncated)
            sid = event.stream_id
            if sid not in self._pending or event.type != FrameType.RESPONSE:
                continue
            self._pending.discard(sid)
            if not isinstance(event, Frame):  # oversized (a client admits every legal frame)
                response = Response.from_error(_too_large(event.length, self._max_payload))
            else:
                try:
                    response = decode_response(event.payload)
                except ProtocolError as exc:
                    response = Response.from_error(Internal(exc.message))
            return ResponseReceived(sid, response)
