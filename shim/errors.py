"""The error vocabulary of the shim.

Every module raises one of these classes; the ttrpc server turns them into a gRPC status
exactly once, at the RPC boundary. containerd's errdefs maps the status code back to its own
error classes (``errdefs.FromGRPC``), so the code is the contract: NotFound from Delete is
tolerated, NotFound from Kill means "process already finished", and so on. Any other exception
reaching the boundary becomes UNKNOWN with its text, and is logged there once.
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
        err = Unknown(message)
        return err
    return cls(message)


def to_status(exc: BaseException) -> tuple[Code, str]:
    """The (code, message) a server sends for an exception raised by a handler."""
    if isinstance(exc, ShimError):
        return exc.code, exc.message
    return Code.UNKNOWN, f"{type(exc).__name__}: {exc}"
