"""The warm runtime's control socket: where it is, and the messages on it.

The socket is `CONTROL_DIR/<key>.sock`, where `key` is a checksum of containerd's socket
address, so each containerd on a node has its own runtime (and a test suite running several
private containerds never shares one). It is a SOCK_SEQPACKET socket, mode 0600 in a 0700
directory: only root reaches it, and the runtime also checks the peer's credentials.

A message is one datagram: NUL-separated UTF-8 fields, the first the operation, the others
`key=value` (a key may repeat: `env`). No JSON and no `socket` module here: `start` encodes
and sends a request with nothing but `_socket` and `zlib`, which cost well under a
millisecond to import.

Operations (client -> runtime: fields; then the answers):
    start    id namespace address publish_binary bundle debug identity env...
             -> ok address= | retire | error code= message=
    compile  kind name cache_dir cache_limit, and the program's descriptor (SCM_RIGHTS)
             -> ok path= note= | error code= message=
    ping     -> ok identity= pid=
    retire   -> ok
A compile request is answered on the same connection: at once when the runtime finds the
entry in the cache, else by a compile job, possibly minutes later; or not at all (the
connection closes) when the runtime cannot take it on, and then the container process
compiles the program itself. Every other request is answered at once.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable

CONTROL_DIR = "/run/containerd/wasmtime/warm"
MAX_MESSAGE = 4 << 20  # the whole environment of a `start` must fit


def control_key(containerd_address: str) -> str:
    """The runtime's name for one containerd: 8 hex digits of a checksum of its address."""
    return f"{zlib.crc32(os.path.normpath(containerd_address or '/').encode()):08x}"


def control_path(containerd_address: str, suffix: str = ".sock") -> str:
    """The control socket (or, with another suffix, the `.lock`, `.pid` or `.log` file)."""
    return os.path.join(CONTROL_DIR, control_key(containerd_address) + suffix)


class Message:
    """A decoded message (a plain class: `dataclasses` would import `inspect` on `start`)."""

    __slots__ = ("fields", "op")

    def __init__(self, op: str, fields: tuple[tuple[str, str], ...] = ()) -> None:
        self.op = op
        self.fields = fields

    def __repr__(self) -> str:
        return f"Message({self.op!r}, {self.fields!r})"

    def get(self, key: str, default: str = "") -> str:
        """The last value of `key`."""
        value = default
        for k, v in self.fields:
            if k == key:
                value = v
        return value

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.fields if k == key]


def encode(op: str, fields: Iterable[tuple[str, str]] = ()) -> bytes:
    """One message. Raises ValueError for a NUL inside a field or an oversized message."""
    parts = [op] + [f"{k}={v}" for k, v in fields]
    if any("\0" in p for p in parts):
        raise ValueError("a field of a control message contains NUL")
    data = "\0".join(parts).encode("utf-8", "surrogateescape")
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"control message of {len(data)} bytes is over {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> Message:
    """One message. Raises ValueError when it is not one."""
    parts = data.decode("utf-8", "surrogateescape").split("\0")
    if not parts[0] or "=" in parts[0]:
        raise ValueError("a control message starts with its operation")
    fields = []
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"field {part[:40]!r} of a control message has no '='")
        fields.append((key, value))
    return Message(parts[0], tuple(fields))
