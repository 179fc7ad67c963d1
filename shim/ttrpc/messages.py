"""ttrpc's two envelope messages, as plain frozen dataclasses, and their protobuf codec.

Every unary call is one ``ttrpc.Request`` frame answered by one ``ttrpc.Response`` frame.
The rest of the ttrpc package works with the dataclasses below, so the generated protobuf
classes stay inside this module, and malformed payloads surface as one error type
(:class:`~shim.ttrpc.frames.ProtocolError`) instead of protobuf's own exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shim.api.ttrpc import request_pb2
from shim.errors import Code, to_status
from shim.ttrpc.frames import ProtocolError

# The metadata key containerd uses to carry the namespace of a call.
NAMESPACE_KEY = "containerd-namespace-ttrpc"

MetadataPairs = tuple[tuple[str, str], ...]


def metadata_pairs(metadata: Mapping[str, str | Sequence[str]] | None) -> MetadataPairs:
    """Normalise caller metadata into wire order: lower-case keys (as ttrpc's MD does),
    one pair per value."""
    if not metadata:
        return ()
    pairs: list[tuple[str, str]] = []
    for key, value in metadata.items():
        values = [value] if isinstance(value, str) else list(value)
        pairs.extend((key.lower(), v) for v in values)
    return tuple(pairs)


def metadata_dict(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """Group wire pairs by lower-cased key, keeping the order values arrived in."""
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key.lower(), []).append(value)
    return {key: tuple(values) for key, values in grouped.items()}


@dataclass(frozen=True, slots=True)
class Request:
    """A call: which method, its encoded argument, the caller's remaining time, metadata."""

    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: MetadataPairs = ()


@dataclass(frozen=True, slots=True)
class Response:
    """An answer: a status (code + message) and, on success, the encoded result."""

    code: int = Code.OK
    message: str = ""
    payload: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == Code.OK

    @classmethod
    def from_error(cls, exc: BaseException) -> Response:
        """The failure answer for ``exc``: :func:`shim.errors.to_status` gives code and message."""
        code, message = to_status(exc)
        return cls(code=code, message=message)


def encode_request(request: Request) -> bytes:
    msg = request_pb2.Request(
        service=request.service,
        method=request.method,
        payload=request.payload,
        timeout_nano=request.timeout_nano,
    )
    for key, value in request.metadata:
        msg.metadata.add(key=key, value=value)
    return msg.SerializeToString()


def decode_request(data: bytes) -> Request:
    """Parse a Request frame payload; raises ProtocolError (remote) on malformed bytes."""
    msg = request_pb2.Request()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, and worse on odd input
        raise ProtocolError(f"unmarshal request error: {exc}", remote=True) from exc
    return Request(
        service=msg.service,
        method=msg.method,
        payload=msg.payload,
        timeout_nano=msg.timeout_nano,
        metadata=tuple((kv.key, kv.value) for kv in msg.metadata),
    )


def encode_response(response: Response) -> bytes:
    msg = request_pb2.Response(payload=response.payload)
    # An OK status still goes on the wire, as an empty submessage, like ttrpc-go does.
    msg.status.code = int(response.code)
    msg.status.message = response.message
    return msg.SerializeToString()


def decode_response(data: bytes) -> Response:
    """Parse a Response frame payload; raises ProtocolError (remote) on malformed bytes."""
    msg = request_pb2.Response()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, and worse on odd input
        raise ProtocolError(f"unmarshal response error: {exc}", remote=True) from exc
    return Response(code=msg.status.code, message=msg.status.message, payload=msg.payload)
