"""How much a ttrpc server lets its peers make it hold, sans-IO: the caps and the shared count.

ttrpc itself bounds one frame (4 MiB) and nothing else: 50 connections that each send the
first half of a 4 MiB frame and stop would make a shim hold 200 MiB. Here every frame is
*charged* before its payload is buffered: twice its announced length (a request being handled
exists twice, as its bytes and as its decoded message) plus ``call_overhead`` (the objects a
call creates besides its bytes, about 3 KiB measured). The charge is held while the frame is
being received and, for a request, until its answer has been handed to the socket; it is
returned when the frame turns out not to be a call, when the answer has left, or when the
connection closes. A frame whose charge does not fit is refused before any of it is kept: the
server answers RESOURCE_EXHAUSTED on its stream and skips its bytes as they arrive.

Two caps apply to every charge:

- per connection, ``connection_bytes``: one frame of the largest legal size plus room for
  smaller calls in flight beside it;
- per server (one shim), ``server_bytes`` across all connections, of which the last
  ``small_reserve`` bytes are only for frames up to ``small_frame`` bytes. containerd's task
  calls are small, so peers holding big frames can never take the room those calls need.

Besides the charged bytes, each connection costs its transport's buffers; the number of
connections is capped by ``max_connections`` (more are closed as they are accepted). A frame
must arrive whole within ``frame_timeout`` seconds of its header, and a peer must take the
server's answers within as long, or the connection is closed and its charges returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from shim.ttrpc.frames import MAX_PAYLOAD

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """The caps of one server (module docstring); the defaults are the shim's."""

    max_connections: int = 16
    connection_bytes: int = 2 * MAX_PAYLOAD + MIB
    server_bytes: int = 16 * MIB
    small_frame: int = 64 << 10
    small_reserve: int = MIB
    call_overhead: int = 4 << 10
    frame_timeout: float = 10.0


class Budget:
    """The bytes charged to one server's connections together (see the module docstring).

    One instance per server, shared by its connections; single-threaded like the event loop
    that uses it.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.used = 0

    def cost(self, length: int) -> int:
        """The charge of a frame of ``length`` payload bytes (module docstring)."""
        return 2 * length + self.limits.call_overhead

    def charge(self, n: int, *, small: bool) -> bool:
        """Take ``n`` bytes if they fit (small frames may use the reserve); False if not."""
        room = self.limits.server_bytes - self.used
        if not small:
            room -= self.limits.small_reserve
        if n > room:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        """Return ``n`` bytes taken by :meth:`charge`."""
        self.used -= n
        assert self.used >= 0, "ttrpc budget released more than was charged"
