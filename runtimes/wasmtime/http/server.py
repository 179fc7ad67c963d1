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
HTTP/1.1 with keep-alive, a thread per connection (at most MAX_CONNECTIONS, counted by the
accepting thread; more are closed at once) and at most `max_concurrent` programs running at
once: a request takes a slot before its body is read and keeps it until its answer is
written (the rest wait up to their timeout for a slot, then 503). A body is read whole
(Content-Length of ASCII digits, or chunked with hex chunk sizes; at most MAX_BODY: more is
413; any other transfer coding is 501). An answer given before the body was read to its end
(400, 413, 501, 503, and the parser's own 400/414/431/501) closes the connection (after
dropping what the client still sends for up to LINGER seconds), so that the rest is never
read as a request. Answers of the gateway itself: 500 when the program
traps or exits non-zero (it keeps serving), 502 when its output is not a CGI response, 504
when it runs past the timeout. Every answer is logged; a connection that fails (a client
reset) is one line on stderr.

Memory: each request's Store caps its linear memory at the container's headroom (what the
memory limit leaves once the engine is loaded: shim/proc/child.py) divided by
`max_concurrent`, so that the linear memories of all running programs at their caps fit in
the headroom together; when that share is below the program's initial memory, fewer programs
run at once (headroom / initial memory, at least one). The server's own buffers are not part
of that division: each request holding a slot may hold its body (up to MAX_BODY, plus
wasmtime's copy as stdin) and the program's output (up to handler.MAX_OUTPUT), and each open
connection its request head (http.server's limits: 100 header lines of up to 64 KiB). The
README says what that adds.

SIGTERM or SIGINT drains: no new connections, idle keep-alive connections are closed, each
request in flight finishes (its deadline bounds it) and its connection closes; then the
process exits 0. The signal handler only sets an attribute and writes a byte to a pipe the
main thread waits on (it must take no lock: see `_on_signal`). The daemon sends SIGTERM
through, not SIGKILL, once the server is ready (`Process.stand_in`). SIGPIPE is ignored: a
client that goes away must not end the server.
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401  (socket's name codec: not importable inside the container)
import errno
import io
import os
import re
import select
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
SMALL_BODY = 64 << 10  # a body up to this is sent in the same write as the head
MAX_TRAILERS = 100  # trailer lines of a chunked body (ignored) read at most
LINGER = 2.0  # seconds an error's connection reads and drops what the client still sends
IDLE_TIMEOUT = 60.0  # seconds a connection may wait for its next request
DRAIN_GRACE = 5.0  # seconds past the request timeout that a drain waits at most
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_LENGTH = re.compile(r"[0-9]{1,19}")  # str patterns: [0-9] is ASCII only, unlike isdigit()
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,8})[ \t]*(?:;[^\r\n]*)?\r?\n")


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, family: socket.AddressFamily, port: int, app: HttpServer) -> None:
        self.address_family = family
        self.app = app
        self.count_lock = threading.Lock()
        self.open: set[Any] = set()  # the connections counted against MAX_CONNECTIONS
        super().__init__(("::" if family == socket.AF_INET6 else "0.0.0.0", port), _Connection)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Counted here, in the accepting thread, before the connection's thread exists, so
        a burst of connections cannot pass MAX_CONNECTIONS; one more is closed at once."""
        with self.count_lock:
            refused = len(self.open) >= MAX_CONNECTIONS or self.app.draining
            if not refused:
                self.open.add(request)
        if refused:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self.count_lock:
                self.open.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line on stderr (a client reset while its answer is written, say), not
        socketserver's traceback."""
        error = sys.exc_info()[1]
        host = _client_host(client_address[0]) if isinstance(client_address, tuple) else "-"
        _write(2, f"wagi: {host}: the connection ended: {type(error).__name__}: {error}\n")


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
        self.linger = False
        self.server.app.connections.add(self)

    def finish(self) -> None:
        self.server.app.connections.discard(self)
        with contextlib.suppress(OSError):
            super().finish()
        if self.linger:
            self._linger()

    def _linger(self) -> None:
        """After an error answered before the request's body was read: send FIN, then read
        and drop what the client still sends (for at most LINGER seconds), so that closing
        with unread data does not reset the connection before the client has read the
        answer. Nothing read here is parsed."""
        limit = time.monotonic() + LINGER
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            while (left := limit - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(65536):
                    break

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

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The answers BaseHTTPRequestHandler gives itself (400 for a bad request line or
        header, 414, 431, 501 for an unknown method), written and logged as ours are; the
        request was not read to its end, so the connection closes after it."""
        text = message or self.responses.get(code, ("error",))[0]
        self._reject(code, text)

    def log_error(self, format: str, *args: Any) -> None:
        _write(2, f"wagi: {self.address_string()}: {format % args}\n")

    def _access_log(self, status: int, size: int) -> None:
        when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
        host = _client_host(self.client_address[0])
        _write(1, f'{host} - - [{when}] "{self.requestline}" {status} {size}\n')

    def _body(self) -> bytes | bytearray | None:
        """The request body; None after answering 400, 413 or 501 itself (and closing)."""
        encodings_ = self.headers.get_all("Transfer-Encoding") or []
        if encodings_:
            if ",".join(encodings_).strip(" \t").lower() != "chunked":
                self._reject(501, "only the chunked transfer coding is supported")
                return None
            # A Content-Length beside it is ignored, and the connection is not reused
            # (RFC 9112, 6.3: such a message may be an attempt at request smuggling).
            if self.headers.get("Content-Length") is not None:
                self.close_connection = True
            return self._chunked()
        lengths = {v.strip(" \t") for v in self.headers.get_all("Content-Length") or []}
        if not lengths:
            return b""
        length_text = lengths.pop()
        if lengths or not _LENGTH.fullmatch(length_text):
            self._reject(400, "bad Content-Length")
            return None
        length = int(length_text)
        if length > MAX_BODY:
            self._reject(413, f"the body is larger than {MAX_BODY} bytes")
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    def _chunked(self) -> bytearray | None:
        """A chunked body, read into one buffer (no copy per chunk)."""
        body = bytearray()
        while True:
            found = _CHUNK_SIZE.fullmatch(self.rfile.readline(1024))
            if found is None:
                self._reject(400, "bad chunk size")
                return None
            size = int(found.group(1), 16)
            if size == 0:
                for _ in range(MAX_TRAILERS):  # trailers, ignored
                    if not self.rfile.readline(8192).strip():
                        return body
                self._reject(400, "too many trailer lines")
                return None
            if len(body) + size > MAX_BODY:
                self._reject(413, f"the body is larger than {MAX_BODY} bytes")
                return None
            at = len(body)
            body.extend(bytes(size + 2))
            with memoryview(body) as view:
                got = self.rfile.readinto(view[at:])
            if got != size + 2:
                self.close_connection = True
                return None
            if body[-2:] != b"\r\n":
                self._reject(400, "a chunk does not end with CRLF")
                return None
            del body[-2:]

    def _reject(self, status: int, text: str) -> None:
        """An answer given before the request's body was read to its end: what the client
        sends next is not a request, so the connection closes after the answer (lingering:
        `_linger`)."""
        self.close_connection = True
        self.linger = True
        self._send(_plain(status, text))

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
        body = response.body
        if self.command == "HEAD":
            self.wfile.write(head)
        elif len(body) <= SMALL_BODY:
            self.wfile.write(head + body)
        else:  # no copy of a large body; TCP_NODELAY: no Nagle wait between the writes
            self.wfile.write(head)
            self.wfile.write(body)
        self._access_log(status, len(body))

    def _serve(self) -> None:
        """A request takes its slot before its body is read, so that at most
        `max_concurrent` bodies are in memory at once, and keeps it until its answer is
        written, so that the same holds for the programs' output."""
        app = self.server.app
        if not app.slots.acquire(timeout=app.timeout):
            self._reject(503, f"all {app.concurrent} handler slots stayed busy")
            return
        try:
            body = self._body()
            if body is None:
                return
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
        finally:
            app.slots.release()

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
        self.stopping = False  # set by the signal handler: no lock (see _on_signal)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.slots = threading.BoundedSemaphore(self.concurrent)
        self.listener = self._bind()
        self.port = self.listener.server_address[1]  # the port bound (0 in tests: any free one)
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
        """A plain attribute and a byte on the self-pipe that serve() waits on: Python runs
        a signal handler in the main thread between two bytecodes, possibly while that
        thread holds a lock (inside Event.wait, say), so the handler must take none."""
        self.stop()

    def stop(self) -> None:
        """Begin the drain (what SIGTERM does); callable from any thread."""
        self.stopping = True
        with contextlib.suppress(OSError):  # full (a byte is already there) or closed
            os.write(self._wake_w, b"\0")

    def limit_memory(self, headroom: int, floor: int) -> None:
        """Share the container's linear-memory headroom among the requests (module
        docstring)."""
        share = headroom // self.concurrent
        if floor > share:
            self.concurrent = max(1, headroom // max(floor, 1))
            self.slots = threading.BoundedSemaphore(self.concurrent)
            share = headroom // self.concurrent
            _write(
                2,
                f"wagi: {self.concurrent} requests run at once: the memory limit leaves "
                f"{headroom} bytes and the program starts with {floor} bytes of memory\n",
            )
        self.handler.memory_cap = share
        _write(
            2,
            f"wagi: each request's linear memory is capped at {share} bytes (the memory "
            f"limit leaves {headroom} bytes for {self.concurrent} requests at once)\n",
        )

    def respond(self, request: cgi.Request) -> cgi.Response:
        """Run the program for `request` and turn how it ended into the response. The
        caller holds one of `slots` (_Connection._serve)."""
        env = cgi.environment(request, self.container_env)
        try:
            result = self.handler.call(env, request.body)
        except FailedPrecondition as e:
            _write(2, f"wagi: {e.message}\n")
            return _plain(500, "the handler could not be started")
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
        while not self.stopping:
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r], [], [], 1.0)
            if not thread.is_alive():
                failed = True
                break
        self.draining = True
        self.listener.shutdown()
        thread.join()
        self.listener.server_close()
        limit = time.monotonic() + self.timeout + DRAIN_GRACE
        while self.listener.open and time.monotonic() < limit:
            for conn in list(self.connections):
                conn.stop_if_idle()
            time.sleep(0.05)
        ticker.stop()
        wake_w, self._wake_w = self._wake_w, -1  # a late signal writes nowhere
        os.close(wake_w)
        os.close(self._wake_r)
        left = len(self.listener.open)
        if left:
            _write(2, f"wagi: {left} connections still open after the drain\n")
        sys.stdout.flush()
        return 1 if failed else 0
