"""The CGI gateway's protocol, with no IO: a request -> the program's environment, and the
program's output -> an HTTP response (RFC 3875, sections 4 and 6).

The environment holds the container's own `process.env` first, then the meta-variables
below (a variable of the request replaces a same-named one of the container):
GATEWAY_INTERFACE, SERVER_SOFTWARE, SERVER_PROTOCOL, SERVER_NAME, SERVER_PORT,
REQUEST_METHOD, REQUEST_URI (the target as sent), SCRIPT_NAME (empty: the program is the
whole site), PATH_INFO (the path, percent-decoded), QUERY_STRING (as sent), REMOTE_ADDR,
REMOTE_PORT, CONTENT_LENGTH and CONTENT_TYPE when the request has a body or says them, and
HTTP_<NAME> for every other header (upper case, `-` as `_`, repeated headers joined with
", "). Dropped: a header whose name is not an RFC 7230 token (`Host=evil` must not become
a variable that getenv("HTTP_HOST") finds) or holds `_` (so that `X_Foo` cannot pose as
`X-Foo`), one whose variable would be one the gateway sets itself, and `Proxy`: as
HTTP_PROXY it would name the outgoing proxy to HTTP clients that read it ("httpoxy"), as
Go's net/http/cgi and Apache also refuse to pass it.

The output is header lines (LF or CRLF), an empty line, then the body. `Status: NNN reason`
sets the status; a `Location` without a `Status` is a redirect (302); otherwise 200. Every
other header goes to the client as written, except those that describe the connection or the
framing (`Connection`, `Keep-Alive`, `Transfer-Encoding`, `Content-Length`), which the server
sets itself. Output without the empty line, a line that is not `Name: value`, or a status
that is not three digits from 100 to 599 is not a CGI response (`BadResponse`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

SOFTWARE = "containerd-shim-wasmtime-wagi"
DROPPED_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "status"}
)
_TOKEN = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+\Z")  # RFC 7230 token (ASCII only)
DROPPED_REQUEST_HEADERS = frozenset({"proxy"})


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as the server read it."""

    method: str
    target: str  # the request target as sent: path, then `?query`
    version: str  # "HTTP/1.1"
    headers: tuple[tuple[str, str], ...]
    body: bytes | bytearray
    client: tuple[str, int]
    server_port: int
    server_name: str  # the local address, for a request without a Host header


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | memoryview  # a view into the program's output: no copy of it


class BadResponse(ValueError):
    """The program's output is not a CGI response (the gateway answers 502)."""


def environment(req: Request, container_env: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The program's environment for `req` (module docstring)."""
    path, _, query = req.target.partition("?")
    host = next((v for k, v in req.headers if k.lower() == "host"), "")
    server_name = host.rsplit(":", 1)[0] if host and not host.endswith("]") else host
    meta: dict[str, str] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": SOFTWARE,
        "SERVER_PROTOCOL": req.version,
        "SERVER_NAME": server_name or req.server_name,
        "SERVER_PORT": str(req.server_port),
        "REQUEST_METHOD": req.method,
        "REQUEST_URI": req.target,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path),
        "QUERY_STRING": query,
        "REMOTE_ADDR": req.client[0],
        "REMOTE_PORT": str(req.client[1]),
    }
    joined: dict[str, list[str]] = {}
    for name, value in req.headers:
        if "_" in name or not _TOKEN.match(name) or name.lower() in DROPPED_REQUEST_HEADERS:
            continue
        joined.setdefault(name.lower(), []).append(value)
    for lower, values in joined.items():
        value = ", ".join(values)
        if lower == "content-length":
            continue  # from the body actually read, below
        if lower == "content-type":
            meta["CONTENT_TYPE"] = value
            continue
        variable = "HTTP_" + lower.upper().replace("-", "_")
        if variable not in meta:
            meta[variable] = value
    if req.body or "content-length" in joined:
        meta["CONTENT_LENGTH"] = str(len(req.body))
    env = [(k, v) for k, v in container_env if k not in meta]
    env.extend(meta.items())
    return env


def parse_output(output: bytes | bytearray) -> Response:
    """The response the program wrote. Raises BadResponse (module docstring)."""
    if output.startswith((b"\n", b"\r\n")):
        raise BadResponse("the program wrote no CGI header (its output starts with an empty line)")
    end, body_at = len(output), len(output)
    for blank in (b"\r\n\r\n", b"\n\n", b"\n\r\n", b"\r\n\n"):
        at = output.find(blank)
        if 0 <= at < end:
            end, body_at = at, at + len(blank)
    if end == len(output):
        raise BadResponse("the program's output has no empty line ending its CGI headers")
    head = bytes(output[:end]).decode("latin-1")
    headers: list[tuple[str, str]] = []
    status: tuple[int, str] | None = None
    location = False
    for line in head.replace("\r\n", "\n").split("\n"):
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _TOKEN.match(name):
            raise BadResponse(
                f"the program wrote a header line that is not `Name: value`: {line!r}"
            )
        lower = name.lower()
        if lower == "status":
            code, _, reason = value.partition(" ")
            if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 599:
                raise BadResponse(f"the program wrote a bad Status: {value!r}")
            status = (int(code), reason.strip())
        elif lower == "location":
            location = True
        if lower not in DROPPED_RESPONSE_HEADERS:
            headers.append((name, value))
    if status is None:
        status = (302, "Found") if location else (200, "OK")
    return Response(status[0], status[1], tuple(headers), memoryview(output)[body_at:])
