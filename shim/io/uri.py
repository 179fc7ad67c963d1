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


class Scheme(enum.Enum):
    """Which form of stdio string a stream was given; stdio.py opens each form its own way."""

    NULL = "null"  # "": /dev/null
    PATH = "path"  # /path or fifo:///path: a FIFO, or an existing regular file (seen when opened)
    FILE = "file"  # file:// log URI: append both output streams, creating the file
    BINARY = "binary"  # binary:// or binary-v2://: a logger process reads both output streams


@dataclass(frozen=True, slots=True)
class Target:
    """One stream's destination. ``args`` and ``ready_byte`` only matter for BINARY."""

    scheme: Scheme
    path: str = ""
    args: tuple[str, ...] = ()
    ready_byte: bool = False  # binary-v2: EOF on fd 5 without a byte is a failure

    @property
    def is_log(self) -> bool:
        return self.scheme in (Scheme.FILE, Scheme.BINARY)


NULL = Target(Scheme.NULL)


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
        return Target(Scheme.PATH, uri)
    parts = urlsplit(uri)
    name = parts.scheme
    if name == "":
        raise InvalidArgument(f"{stream} {uri!r}: a path must be absolute")
    if name not in ("fifo", "file", "binary", "binary-v2"):
        raise InvalidArgument(f"{stream} {uri!r}: unknown stdio URI scheme {name!r}")
    if parts.netloc not in ("", "localhost"):
        raise InvalidArgument(f"{stream} {uri!r}: a {name} URI must not name a host")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise InvalidArgument(f"{stream} {uri!r}: the {name} URI needs an absolute path")
    if name == "fifo":
        return Target(Scheme.PATH, path)
    if name == "file":
        return Target(Scheme.FILE, path)
    return Target(
        Scheme.BINARY, path, args=_logger_args(parts.query), ready_byte=name == "binary-v2"
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
    if tin.scheme not in (Scheme.NULL, Scheme.PATH):
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
