"""Requests to the warm runtime that are answered at once (start, ping, retire).

Only `_socket` (not `socket`, which imports `enum` and `selectors`): `start` runs this on
every container start. Every call is bounded by a timeout.
"""

from __future__ import annotations

import _socket
from collections.abc import Iterable

from shim.warm import protocol

SO_SNDBUFFORCE = 32  # Linux's; Python does not export it
START_TIMEOUT = 5.0  # the runtime answers a start at once; longer means it is stuck


class Unreachable(Exception):
    """No warm runtime answers on this containerd's control socket."""


def connect(address: str, timeout: float | None) -> _socket.socket:
    """A connection to this containerd's warm runtime. Raises Unreachable."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        # A message is bounded by the sender's buffer (208 KiB by default): let a request
        # carry up to MAX_MESSAGE (root may exceed net.core.wmem_max; others get that max).
        try:
            sock.setsockopt(_socket.SOL_SOCKET, SO_SNDBUFFORCE, protocol.MAX_MESSAGE + (64 << 10))
        except OSError:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, protocol.MAX_MESSAGE)
        sock.connect(protocol.control_path(address))
    except OSError as e:
        sock.close()
        raise Unreachable(f"no warm runtime at {protocol.control_path(address)}: {e}") from None
    return sock


def call(
    address: str,
    op: str,
    fields: Iterable[tuple[str, str]] = (),
    timeout: float = START_TIMEOUT,
) -> protocol.Message:
    """One request and its answer. Raises Unreachable (no runtime, no answer in time)."""
    sock = connect(address, timeout)
    try:
        sock.send(protocol.encode(op, fields))
        data = sock.recv(protocol.MAX_MESSAGE)
    except OSError as e:  # includes the timeout
        raise Unreachable(f"the warm runtime did not answer {op}: {e}") from None
    finally:
        sock.close()
    if not data:
        raise Unreachable(f"the warm runtime closed the connection without answering {op}")
    try:
        return protocol.decode(data)
    except ValueError as e:
        raise Unreachable(f"the warm runtime's answer to {op} is unreadable: {e}") from None
