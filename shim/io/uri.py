"""Stdio strings -> a plan of what to open, with no IO.

containerd passes three strings per process. Their meaning is decided here, once, so that the
opening code in ``stdio.py`` only acts:

- ``""`` means nothing is attached (``/dev/null``);
- an absolute path or ``fifo:///path`` names a FIFO the client created (or, like the runc shim
  accepts, an existing regular file to append to);
- ``file:///path`` and ``binary:///path?k=v`` are *log URIs* (``ctr --log-uri``, nerdctl). They
  always carry both output streams: the runc shim looks only at stdout's URI and sends stderr to
  the same place. We accept the other output stream being empty or the very same URI, and refuse
  anything else instead of silently dropping it;
- ``binary-v2://`` is ``binary://`` where the logger must write a byte before closing fd 5.

Anything else is an InvalidArgument that names the offending string.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from shim.errors import InvalidArgument


class Kind(enum.Enum):
    """What one stream is attached to."""

    NULL = "null"
    PATH = "path"  # a FIFO, or an existing regular file (decided when opened)
    FILE = "file"  # file:// log URI: append both output streams, creating the file
    BINARY = "binary"  # binary:// log URI: a logger process reads both output streams


@dataclass(frozen=True, slots=True)
class Target:
    """One stream's destination. ``args`` and ``ready_byte`` only matter for BINARY."""

    kind: Kind
    path: str = ""
    args: tuple[str, ...] = ()
    ready_byte: bool = False  # binary-v2: EOF on fd 5 without a byte is a failure

    @property
    def is_log(self) -> bool:
        return self.kind in (Kind.FILE, Kind.BINARY)


NULL = Target(Kind.NULL)


@dataclass(frozen=True, slots=True)
class Plan:
    """The three targets. When ``shared`` is true stdout and stderr are the same log target and
    must be served by one file descriptor / one logger process."""

    stdin: Target
    stdout: Target
    stderr: Target
    shared: bool = False


def parse(uri: str, stream: str) -> Target:
    """Parse one stdio string. ``stream`` ("stdin", ...) only names it in error messages.

    Raises InvalidArgument for an unknown scheme, a relative path, or a URI with a host.
    """
    if uri == "":
        return NULL
    if uri.startswith("/"):
        # A plain path is used verbatim: '?', '#' and '%' are legal in file names.
        return Target(Kind.PATH, uri)
    parts = urlsplit(uri)
    scheme = parts.scheme
    if scheme == "":
        raise InvalidArgument(f"{stream} {uri!r}: a path must be absolute")
    if scheme not in ("fifo", "file", "binary", "binary-v2"):
        raise InvalidArgument(f"{stream} {uri!r}: unknown stdio URI scheme {scheme!r}")
    if parts.netloc not in ("", "localhost"):
        raise InvalidArgument(f"{stream} {uri!r}: a {scheme} URI must not name a host")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise InvalidArgument(f"{stream} {uri!r}: the {scheme} URI needs an absolute path")
    if scheme == "fifo":
        return Target(Kind.PATH, path)
    if scheme == "file":
        return Target(Kind.FILE, path)
    return Target(
        Kind.BINARY, path, args=_logger_args(parts.query), ready_byte=scheme == "binary-v2"
    )


def _logger_args(query: str) -> tuple[str, ...]:
    """``?k=v&k2=v2`` -> ``(k, v, k2, v2)``, as the runc shim builds the logger's argv.

    Go's url.Values keeps only the first value per key for this purpose and a bare ``k``
    still contributes an empty value; Go iterates its map in random order, we keep the order
    of first appearance, which is one of the orders Go may produce.
    """
    seen: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        seen.setdefault(key, value)
    args: list[str] = []
    for key, value in seen.items():
        args += [key, value]
    return tuple(args)


def plan(stdin: str, stdout: str, stderr: str) -> Plan:
    """Decide the three targets, checking that the combination is one we can serve.

    Raises InvalidArgument (a log URI on stdin, two different destinations where a log URI
    takes both output streams, or anything ``parse`` refuses).
    """
    tin = parse(stdin, "stdin")
    if tin.kind not in (Kind.NULL, Kind.PATH):
        raise InvalidArgument(f"stdin {stdin!r}: only a FIFO path can be used for stdin")
    tout = parse(stdout, "stdout")
    terr = parse(stderr, "stderr")
    if not (tout.is_log or terr.is_log):
        return Plan(tin, tout, terr)
    log_uri, other = (stdout, stderr) if tout.is_log else (stderr, stdout)
    if other not in ("", log_uri):
        raise InvalidArgument(
            f"log URI {log_uri!r} takes both stdout and stderr; "
            f"the other stream must be empty or the same URI, not {other!r}"
        )
    log = tout if tout.is_log else terr
    return Plan(tin, log, log, shared=True)
