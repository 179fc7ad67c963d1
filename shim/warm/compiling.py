"""The compile request: the pod daemon asks, a compile job answers, a container process reads.

At Create the daemon sends the entrypoint's descriptor to the warm runtime and keeps the
connection without reading it; at Start it hands the connection to the container process,
which reads the answer (blocking, while the daemon can still kill it) before it loads the
program. So a compile that outlives a Start is never waited for by the daemon, and never lost:
the job finishes and leaves its entry in the cache whoever is still listening.
"""

from __future__ import annotations

import _socket
import os
import sys

from runtimes.base import CacheSettings, Compiled, EntrypointKind
from shim import errors
from shim.warm import protocol
from shim.warm.client import START_TIMEOUT, Unreachable, connect


def request_compile(
    address: str, source_fd: int, kind: EntrypointKind, name: str, cache: CacheSettings
) -> int | None:
    """Ask for the verified cache entry of the program on `source_fd`; the descriptor on which
    the answer will arrive (for the container process), or None when no runtime answers (the
    container process then compiles itself)."""
    try:
        sock = connect(address, START_TIMEOUT)
    except Unreachable:
        return None
    fields = [
        ("kind", kind.value),
        ("name", name),
        ("cache_dir", cache.dir),
        ("cache_limit", str(cache.limit)),
    ]
    try:
        fds = source_fd.to_bytes(4, sys.byteorder)
        sock.sendmsg(
            [protocol.encode("compile", fields)],
            [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)],
        )
        sock.setblocking(True)  # the container process reads it blocking
    except OSError:
        sock.close()
        return None
    return sock.detach()


def read_compile_reply(fd: int) -> Compiled | None:
    """The compile job's answer on `fd` (blocking; closes `fd`): the entry, None when the job
    ended without an answer, or the program's error (ShimError)."""
    try:
        data = os.read(fd, protocol.MAX_MESSAGE)
    except OSError:
        data = b""
    finally:
        os.close(fd)
    if not data:
        return None
    try:
        msg = protocol.decode(data)
    except ValueError:
        return None
    if msg.op == "ok":
        return Compiled(path=msg.get("path"), note=msg.get("note"))
    raise errors.from_status(
        int(msg.get("code", str(int(errors.Code.UNKNOWN)))), msg.get("message")
    )
