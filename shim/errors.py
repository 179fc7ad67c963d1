"""The error vocabulary of the shim: a class per gRPC status code, and the two conversions.

containerd's errdefs maps a status code back to its own error classes (``errdefs.FromGRPC``), so
the code is the contract: NotFound from Delete is tolerated, NotFound from Kill means "process
already finished", and so on. The shim's ttrpc layer converts with the two functions here:

- ``to_status`` turns an exception into the (code, message) the ttrpc server answers with. A
  ShimError gives its class's code and its message verbatim; any other exception gives UNKNOWN
  with its type and text (and the ttrpc server logs it once, with its traceback).
- ``from_status`` turns a non-OK status from a ttrpc peer into the class of its code, which the
  ttrpc client raises, so NotFound from containerd is caught as NotFound. The codes without a
  class here (OUT_OF_RANGE, DATA_LOSS, UNAUTHENTICATED, or a number gRPC does not define)
  become Unknown.

So the code of a failure is decided wherever one of these classes (or a ``Code``) is chosen:

- by the module that raises it, for everything a request can fail on (a handler's NotFound,
  FailedPrecondition, ...);
- by shim/ttrpc/server.py for the refusals of dispatch (UNAVAILABLE while shutting down,
  UNIMPLEMENTED for an unknown service or method, INVALID_ARGUMENT for a request message that
  does not decode, DEADLINE_EXCEEDED when the caller's timeout passes);
- by shim/ttrpc/connection.py for faults of the wire itself, which no handler ever sees (the
  table in its docstring; RESOURCE_EXHAUSTED for a response too large to send; on the client
  side RESOURCE_EXHAUSTED for an oversized answer and INTERNAL for one that does not decode);
- by shim/ttrpc/client.py for a call's own failures (DEADLINE_EXCEEDED when its timeout passes,
  UNAVAILABLE when the connection is or becomes closed, INTERNAL for a reply message that does
  not decode);
- by ``ProtocolError`` (shim/ttrpc/frames.py), INVALID_ARGUMENT unless the raise site names a
  Code: RESOURCE_EXHAUSTED for a message too large to send, UNAVAILABLE when a connection's
  stream ids run out; the ttrpc client re-raises those as the matching class here.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """gRPC status codes (google.rpc.Code), the numbers containerd's errdefs understands."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ShimError(Exception):
    """An expected failure with a status code; the message reaches the caller verbatim."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Cancelled(ShimError):
    code = Code.CANCELLED


class Unknown(ShimError):
    code = Code.UNKNOWN


class InvalidArgument(ShimError):
    code = Code.INVALID_ARGUMENT


class DeadlineExceeded(ShimError):
    code = Code.DEADLINE_EXCEEDED


class NotFound(ShimError):
    code = Code.NOT_FOUND


class AlreadyExists(ShimError):
    code = Code.ALREADY_EXISTS


class PermissionDenied(ShimError):
    code = Code.PERMISSION_DENIED


class ResourceExhausted(ShimError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(ShimError):
    code = Code.FAILED_PRECONDITION


class Aborted(ShimError):
    code = Code.ABORTED


class Unimplemented(ShimError):
    code = Code.UNIMPLEMENTED


class Internal(ShimError):
    code = Code.INTERNAL


class Unavailable(ShimError):
    code = Code.UNAVAILABLE


_BY_CODE: dict[Code, type[ShimError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        Unimplemented,
        Internal,
        Unavailable,
    )
}


def from_status(code: int, message: str) -> ShimError:
    """The exception a client raises for a non-OK status received from a peer."""
    try:
        cls = _BY_CODE[Code(code)]
    except (ValueError, KeyError):
        return Unknown(message)
    return cls(message)


def to_status(exc: BaseException) -> tuple[Code, str]:
    """The (code, message) a server sends for an exception raised by a handler."""
    if isinstance(exc, ShimError):
        return exc.code, exc.message
    return Code.UNKNOWN, f"{type(exc).__name__}: {exc}"
