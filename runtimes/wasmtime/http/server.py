"""The WAGI server: the container process listens in the container's network namespace and
runs its program once per request (handler.py), until SIGTERM.

It runs where the guest would: after confinement, inside the container's namespaces (so in
the pod's network namespace, or the one the spec names), cgroup and root, as its user. So the
server *is* the container: its exit is the task's exit, Kill reaches it, and its request log
(one line per request in the Common Log Format, `host - - [time] "request line" status
bytes`) goes to the container's stdout; the program's stderr and trap reports go to the
container's stderr.

The socket is bound at Start (`prepare`, before the process reports ready), on every address
(`::`, dual-stack; `0.0.0.0` where IPv6 is off), so a port in use fails Start naming it.
HTTP/1.1 with keep-alive, a thread per connection (at most MAX_CONNECTIONS; more are closed
at once) and at most `max_concurrent` programs running at once (the rest wait up to their
timeout for a slot, then 503). A body is read whole first (Content-Length or chunked, at
most MAX_BODY: more is 413). Answers of the gateway itself: 500 when the program traps or
exits non-zero (it keeps serving), 502 when its output is not a CGI response, 504 when it
runs past the timeout.

Memory: each request's Store caps its linear memory at the container's headroom (what the
memory limit leaves once the engine is loaded: shim/proc/child.py) divided by
`max_concurrent`, so that every running program at its cap together still fits; when that
share is below the program's initial memory, fewer programs run at once (headroom / initial
memory, at least one).

SIGTERM or SIGINT drains: no new connections, idle keep-alive connections are closed, each
request in flight finishes (its deadline bounds it) and its connection closes; then the
process exits 0. The daemon sends SIGTERM through, not SIGKILL, once the server is ready
(`Process.stand_in`). SIGPIPE is ignored: a client that goes away must not end the server.
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401  (socket's name codec: not importable inside the container)
import errno
import io
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from runtimes.base import Entrypoint, RunConfig
from runtimes.wasmtime import run as wrun
from runtimes.wasmtime.http import cgi
from runtimes.wasmtime.http.handler import Handler, Outcome, Ticker
from runtimes.wasmtime.wasi import split_env
from shim.errors import FailedPrecondition

MAX_CONNECTIONS = 512
MAX_BODY = 8 << 20
IDLE_TIMEOUT = 60.0  # seconds a connection may wait for its next request
DRAIN_GRACE = 5.0  # seconds past the request timeout that a drain waits at most
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, family: socket.AddressFamily, port: int, app: HttpServer) -> None:
        self.address_family = family
        self.app = app
        super().__init__(("::" if family == socket.AF_INET6 else "0.0.0.0", port), _Connection)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return len(self.app.connections) < MAX_CONNECTIONS and not self.app.draining


class _Connection(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = cgi.SOFTWARE
    timeout = IDLE_TIMEOUT
    server: _Listener

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        self.busy = False
        self.server.app.connections.add(self)

    def finish(self) -> None:
        self.server.app.connections.discard(self)
        with contextlib.suppress(OSError):
            super().finish()

    def handle_one_request(self) -> None:
        try:
            rfile = self.rfile
            assert isinstance(rfile, io.BufferedReader)
            if not rfile.peek(1):  # idle until the next request's first byte
                self.close_connection = True
                return
        except (OSError, ValueError):
            self.close_connection = True
            return
        with self.lock:
            if self.server.app.draining:
                self.close_connection = True
                return
            self.busy = True
        try:
            super().handle_one_request()
        finally:
            with self.lock:
                self.busy = False
            if self.server.app.draining:
                self.close_connection = True

    def stop_if_idle(self) -> None:
        """For a drain: end the connection now unless a request is in flight."""
        with self.lock:
            if not self.busy:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the access log is written once the response is sent (`_access_log`)

    def log_error(self, format: str, *args: Any) -> None:
        _write(2, f"wagi: {self.address_string()}: {format % args}\n")

    def _access_log(self, status: int, size: int) -> None:
        when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
        host = _client_host(self.client_address[0])
        _write(1, f'{host} - - [{when}] "{self.requestline}" {status} {size}\n')

    def _body(self) -> bytes | None:
        """The request body; None after answering 400 or 413 itself."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked()
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        if not length_text.strip().isdigit():
            self._error(400, "bad Content-Length")
            return None
        length = int(length_text)
        if length > MAX_BODY:
            self._error(413, f"the body is larger than {MAX_BODY} bytes")
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    def _chunked(self) -> bytes | None:
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                self._error(400, "bad chunk size")
                return None
            if size == 0:
                while self.rfile.readline(8192).strip():  # trailers, ignored
                    pass
                return bytes(body)
            if len(body) + size > MAX_BODY:
                self._error(413, f"the body is larger than {MAX_BODY} bytes")
                return None
            chunk = self.rfile.read(size + 2)
            if len(chunk) != size + 2:
                self.close_connection = True
                return None
            body += chunk[:size]

    def _error(self, status: int, text: str) -> None:
        self._send(
            cgi.Response(status, "", (("Content-Type", "text/plain"),), text.encode() + b"\n")
        )

    def _send(self, response: cgi.Response) -> None:
        """Status line, headers and body in one write (no Nagle wait between them)."""
        if self.server.app.draining:
            self.close_connection = True
        status = response.status
        reason = response.reason or self.responses.get(status, ("",))[0]
        lines = [f"{self.protocol_version} {status} {reason}", f"Date: {self.date_time_string()}"]
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        lines.append(f"Content-Length: {len(response.body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        self.wfile.write(head if self.command == "HEAD" else head + response.body)
        self._access_log(status, len(response.body))

    def _serve(self) -> None:
        body = self._body()
        if body is None:
            return
        app = self.server.app
        local = self.connection.getsockname()
        request = cgi.Request(
            method=self.command,
            target=self.path,
            version=self.request_version,
            headers=tuple(self.headers.items()),
            body=body,
            client=(_client_host(self.client_address[0]), int(self.client_address[1])),
            server_port=app.port,
            server_name=str(local[0]),
        )
        self._send(app.respond(request))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve


def _client_host(address: object) -> str:
    """The client's address, an IPv4 client on the dual-stack socket as plain IPv4."""
    text = str(address)
    return text[7:] if text.startswith("::ffff:") and "." in text else text


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "replace")
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(fd, data) :]


def _plain(status: int, text: str) -> cgi.Response:
    return cgi.Response(status, "", (("Content-Type", "text/plain"),), text.encode() + b"\n")


class HttpServer:
    """A prepared WAGI server: the program loaded and checked, the socket bound."""

    def __init__(self, cfg: RunConfig, entry: Entrypoint, loaded: wrun.Loaded) -> None:
        assert cfg.http is not None
        self.entry = entry
        self.port = cfg.http.port
        self.timeout = cfg.http.timeout
        self.concurrent = cfg.http.max_concurrent
        self.handler = Handler(cfg, entry, loaded)
        self.handler.check()
        self.container_env = split_env(cfg.env)
        self.connections: set[_Connection] = set()
        self.draining = False
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(self.concurrent)
        self.listener = self._bind()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _bind(self) -> _Listener:
        try:
            try:
                return _Listener(socket.AF_INET6, self.port, self)
            except OSError as e:
                if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                return _Listener(socket.AF_INET, self.port, self)
        except OSError as e:
            raise FailedPrecondition(
                f"cannot serve HTTP on port {self.port} in the container's network "
                f"namespace: {e.strerror or e}"
            ) from None

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop.set()

    def limit_memory(self, headroom: int, floor: int) -> None:
        """Share the container's linear-memory headroom among the requests (module
        docstring)."""
        share = headroom // self.concurrent
        if floor > share:
            self.concurrent = max(1, headroom // max(floor, 1))
            self._slots = threading.BoundedSemaphore(self.concurrent)
            share = headroom // self.concurrent
            _write(
                2,
                f"wagi: {self.concurrent} requests run at once: the memory limit leaves "
                f"{headroom} bytes and the program starts with {floor} bytes of memory\n",
            )
        self.handler.memory_cap = share

    def respond(self, request: cgi.Request) -> cgi.Response:
        """Run the program for `request` and turn how it ended into the response."""
        if not self._slots.acquire(timeout=self.timeout):
            return _plain(503, f"all {self.concurrent} handler slots stayed busy")
        try:
            env = cgi.environment(request, self.container_env)
            try:
                result = self.handler.call(env, request.body)
            except FailedPrecondition as e:
                _write(2, f"wagi: {e.message}\n")
                return _plain(500, "the handler could not be started")
        finally:
            self._slots.release()
        if result.outcome is Outcome.TIMEOUT:
            return _plain(504, f"the handler ran past its timeout of {self.timeout:g} s")
        if result.outcome is Outcome.TRAPPED:
            return _plain(500, "the handler trapped")
        if result.status != 0:
            return _plain(500, f"the handler exited with status {result.status}")
        if result.truncated:
            return _plain(502, "the handler's response is too large")
        try:
            return cgi.parse_output(result.output)
        except cgi.BadResponse as e:
            _write(2, f"wagi: {e}\n")
            return _plain(502, "the handler's output is not a CGI response")

    def serve(self) -> int:
        """Serve until SIGTERM/SIGINT, drain, and return the exit status: 0, or 1 when the
        accepting thread ended on its own (an error it wrote to stderr)."""
        ticker = Ticker()
        ticker.start()
        thread = threading.Thread(
            target=self.listener.serve_forever, kwargs={"poll_interval": 0.2}, name="accept"
        )
        thread.start()
        _write(2, f"wagi: serving {self.entry.guest_path} on port {self.port}\n")
        failed = False
        while not self._stop.wait(1.0):
            if not thread.is_alive():
                failed = True
                break
        self.draining = True
        self.listener.shutdown()
        thread.join()
        self.listener.server_close()
        limit = time.monotonic() + self.timeout + DRAIN_GRACE
        while self.connections and time.monotonic() < limit:
            for conn in list(self.connections):
                conn.stop_if_idle()
            time.sleep(0.05)
        ticker.stop()
        left = len(self.connections)
        if left:
            _write(2, f"wagi: {left} connections still open after the drain\n")
        sys.stdout.flush()
        return 1 if failed else 0
