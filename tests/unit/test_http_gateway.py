"""The WAGI gateway: its pure parts (the switch, the CGI environment and response parsing,
the spawn wire's HttpServing, which signal a server gets), and the HTTP server itself run
in this process on the loopback (framing, errors, limits, logs, the signal handler)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimes.base import Entrypoint, EntrypointKind, HttpMode, HttpServing, Preopen, RunConfig
from runtimes.wasmtime.http import cgi, switch
from runtimes.wasmtime.http import server as server_module
from runtimes.wasmtime.http.server import MAX_BODY, STOP_SIGNALS, HttpServer
from runtimes.wasmtime.runtime import WasmtimeRuntime
from shim.errors import FailedPrecondition, InvalidArgument
from shim.proc import wire
from shim.proc.child import ProcessSetup
from shim.proc.process import Process

A = switch.ANNOTATION_PREFIX


@pytest.mark.parametrize(
    ("env", "annotations", "expected"),
    [
        ((), {}, None),
        ((), {A + "http": "wagi"}, HttpServing(HttpMode.WAGI, 8080, 30.0, 16)),
        (("WASMTIME_HTTP=WAGI",), {}, HttpServing(HttpMode.WAGI, 8080, 30.0, 16)),
        (("WASMTIME_HTTP=off",), {A + "http": "wagi"}, None),  # the environment wins
        (
            ("WASMTIME_HTTP_PORT=9000",),
            {A + "http": "wagi", A + "http-port": "81", A + "http-timeout": "1.5"},
            HttpServing(HttpMode.WAGI, 9000, 1.5, 16),
        ),
        (
            (),
            {A + "http": "wagi", A + "http-concurrency": "2"},
            HttpServing(HttpMode.WAGI, 8080, 30.0, 2),
        ),
    ],
)
def test_switch(
    env: tuple[str, ...], annotations: dict[str, str], expected: HttpServing | None
) -> None:
    assert switch.from_spec(env, annotations) == expected


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({A + "http": "cgi"}, "wasmtime.containerd.io/http"),
        ({A + "http": "wagi", A + "http-port": "0"}, "http-port"),
        ({A + "http": "wagi", A + "http-port": "80x"}, "http-port"),
        ({A + "http": "wagi", A + "http-timeout": "0"}, "http-timeout"),
        ({A + "http": "wagi", A + "http-concurrency": "5000"}, "http-concurrency"),
    ],
)
def test_bad_switch_values_are_refused_naming_the_setting(
    annotations: dict[str, str], named: str
) -> None:
    with pytest.raises(InvalidArgument, match=named):
        switch.from_spec((), annotations)


def test_proxy_mode_is_refused_with_the_reason() -> None:
    with pytest.raises(FailedPrecondition, match="incoming-request"):
        switch.from_spec(("WASMTIME_HTTP=proxy",), {})


def request(**kw: object) -> cgi.Request:
    base: dict[str, object] = {
        "method": "POST",
        "target": "/a%20b/c?x=1&y=%20",
        "version": "HTTP/1.1",
        "headers": (
            ("Host", "example.com:8080"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "3"),
            ("X-Many", "1"),
            ("x-many", "2"),
            ("X_Sneaky", "no"),
        ),
        "body": b"abc",
        "client": ("10.0.0.9", 4242),
        "server_port": 8080,
        "server_name": "10.0.0.1",
    }
    base.update(kw)
    return cgi.Request(**base)  # type: ignore[arg-type]


def test_cgi_environment() -> None:
    env = dict(cgi.environment(request(), [("PATH_INFO", "container's"), ("KEEP", "1")]))
    assert env["KEEP"] == "1"
    assert env["PATH_INFO"] == "/a b/c"  # decoded, and the request's wins
    assert env["QUERY_STRING"] == "x=1&y=%20"  # as sent
    assert env["REQUEST_URI"] == "/a%20b/c?x=1&y=%20"
    assert env["REQUEST_METHOD"] == "POST"
    assert env["CONTENT_LENGTH"] == "3" and env["CONTENT_TYPE"] == "text/plain"
    assert env["HTTP_X_MANY"] == "1, 2"
    assert "HTTP_X_SNEAKY" not in env and "HTTP_CONTENT_TYPE" not in env
    assert env["SERVER_NAME"] == "example.com" and env["SERVER_PORT"] == "8080"
    assert env["REMOTE_ADDR"] == "10.0.0.9" and env["REMOTE_PORT"] == "4242"


def test_cgi_environment_without_body_or_host() -> None:
    env = dict(cgi.environment(request(headers=(), body=b"", method="GET"), []))
    assert "CONTENT_LENGTH" not in env
    assert env["SERVER_NAME"] == "10.0.0.1"


@pytest.mark.parametrize(
    ("output", "status", "headers", "body"),
    [
        (b"Content-Type: text/plain\n\nhi", 200, (("Content-Type", "text/plain"),), b"hi"),
        (b"Status: 404 Gone\r\nX-A: b\r\n\r\n\n", 404, (("X-A", "b"),), b"\n"),
        (b"Location: /x\n\n", 302, (("Location", "/x"),), b""),
        (b"Status: 301\nLocation: /y\n\n", 301, (("Location", "/y"),), b""),
        (
            b"Content-Length: 99\nConnection: keep-alive\nX-B: c\n\nbody\n\nmore",
            200,
            (("X-B", "c"),),
            b"body\n\nmore",
        ),
    ],
)
def test_cgi_response(
    output: bytes, status: int, headers: tuple[tuple[str, str], ...], body: bytes
) -> None:
    response = cgi.parse_output(output)
    assert (response.status, response.headers, response.body) == (status, headers, body)


@pytest.mark.parametrize(
    "output",
    [
        b"",
        b"no blank line\n",
        b"\nbody",
        b"not a header\n\n",
        b"Status: 20\n\n",
        b"Status: 600 x\n\n",
    ],
)
def test_not_a_cgi_response(output: bytes) -> None:
    with pytest.raises(cgi.BadResponse):
        cgi.parse_output(output)


def test_http_serving_crosses_the_spawn_wire() -> None:
    cfg = RunConfig(
        container_id="c",
        rootfs="/r",
        args=("/a.wasm",),
        env=("A=1",),
        cwd="/",
        preopens=(Preopen("/", "/", False),),
        http=HttpServing(HttpMode.WAGI, 8081, 2.5, 3),
    )
    entry = Entrypoint("/r/a.wasm", "/a.wasm", None, EntrypointKind.MODULE)
    msg = wire.decode(wire.encode(wire.spawn_request(cfg, entry, ProcessSetup())))
    assert wire.parse_spawn(msg)[0] == cfg


def test_a_ready_server_gets_sigterm_itself_and_a_guest_init_gets_sigkill() -> None:
    async def check() -> None:
        server = Process(pid=1, pid_namespace_init=True, serves_http=True)
        assert server.stand_in(signal.SIGTERM) == signal.SIGKILL  # not ready: no handler yet
        server.killed_as = 0
        server.set_ready()
        assert server.stand_in(signal.SIGTERM) == signal.SIGTERM
        assert server.stand_in(signal.SIGINT) == signal.SIGINT
        assert server.stand_in(signal.SIGHUP) == signal.SIGKILL  # not handled: killed
        guest = Process(pid=2, pid_namespace_init=True)
        guest.set_ready()
        assert guest.stand_in(signal.SIGTERM) == signal.SIGKILL

    asyncio.run(check())


def test_an_http_servers_code_is_cached_under_its_own_key() -> None:
    """Code for the interruptible Engine (epoch checks) never stands in for plain code."""
    from runtimes.wasmtime import engine

    wat = b'(module (func (export "_start")))'
    plain = engine.load_source(wat, EntrypointKind.WAT, "m.wat")
    interruptible = engine.load_source(wat, EntrypointKind.WAT, "m.wat", interruptible=True)
    assert plain.key != interruptible.key and plain.wasm == interruptible.wasm
    assert engine.engine(True) is engine.interruptible_engine()
    assert engine.engine(False) is engine.shared_engine()


def test_request_header_names_that_are_not_tokens_and_proxy_are_dropped() -> None:
    headers = (
        ("Host", "good.example"),
        ("Host=evil", "1"),  # would be HTTP_HOST=EVIL=1: getenv("HTTP_HOST") finds "EVIL=1"
        ("X Y", "space"),
        ("Caf\xe9", "latin-1"),
        ("Proxy", "http://evil.example:3128"),  # httpoxy
        ("X-Fine", "yes"),
    )
    container = [("HTTP_PROXY", "http://corp.example:3128")]
    env = cgi.environment(request(headers=headers), container)
    names = [name for name, _ in env]
    assert all(re.fullmatch("[A-Z0-9_]+", name) for name in names), names
    assert dict(env)["HTTP_HOST"] == "good.example" and names.count("HTTP_HOST") == 1
    assert dict(env)["HTTP_X_FINE"] == "yes"
    assert [v for k, v in env if k == "HTTP_PROXY"] == ["http://corp.example:3128"]


# The server itself, in this process: an HttpServer on a free port of the loopback, serving
# a WAT program that answers 200 with its stdin (the request body) as the body.

ECHO_WAT = r"""
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\n\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 26))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (block $done
      (loop $more
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $done (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (i32.store (i32.const 4) (i32.load (i32.const 8)))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br $more)))))
"""
HANG_GUARD = 20.0  # seconds a client read waits at most (a hang, not a timed assert)


@contextlib.contextmanager
def serving(root: Path, timeout: float = 5.0, concurrency: int = 2) -> Iterator[HttpServer]:
    (root / "echo.wat").write_text(ECHO_WAT)
    cfg = RunConfig(
        container_id="unit",
        rootfs=str(root),
        args=("/echo.wat",),
        env=(),
        cwd="/",
        preopens=(Preopen(str(root), "/", True),),
        http=HttpServing(HttpMode.WAGI, 0, timeout, concurrency),
    )
    runtime = WasmtimeRuntime()
    entry = runtime.resolve(cfg, None)
    saved = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGPIPE)}
    try:
        server = HttpServer(cfg, entry, runtime.load(cfg, entry, None))
        status: list[int] = []
        thread = threading.Thread(target=lambda: status.append(server.serve()))
        thread.start()
        try:
            yield server
        finally:
            server.stop()
            thread.join(timeout=60)
        assert status == [0]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection and read until the server closes it (or HANG_GUARD
    passes: then what came so far)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as conn:
        conn.sendall(data)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := conn.recv(65536):
                got += chunk
    return got


GET = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"Content-Length: 9437184\r\n", b"413"),
        (b"Content-Length: 12x\r\n", b"400"),
        (b"Transfer-Encoding: chunked\r\n", b"400"),  # the GET is no chunk size
        (b"Transfer-Encoding: gzip\r\n", b"501"),
    ],
)
def test_an_answer_before_the_body_was_read_closes_the_connection(
    tmp_path: Path, head: bytes, status: bytes
) -> None:
    """What follows the head is body, never a request of its own (request smuggling)."""
    with serving(tmp_path) as server:
        got = exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + GET)
    assert got.startswith(b"HTTP/1.1 " + status), got
    assert got.count(b"HTTP/1.1 ") == 1 and b"\r\nConnection: close\r\n" in got, got


@pytest.mark.parametrize("size", [b"-3", b"+3", b"0x3", b"0_3", b" ", b"123456789"])
def test_chunk_sizes_are_hex_digits_only(tmp_path: Path, size: bytes) -> None:
    data = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += size + b"\r\nabc\r\n0\r\n\r\n"
    with serving(tmp_path) as server:
        got = exchange(server.port, data)
    assert got.startswith(b"HTTP/1.1 400 "), got


def test_chunked_bodies_arrive_whole_and_are_bounded(tmp_path: Path) -> None:
    body = b"x" * 100_000
    data = b"POST / HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += b"3;name=value\r\nabc\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n"
    data += b"0\r\nX-Trailer: t\r\n\r\n"
    big = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    big += f"{MAX_BODY + 1:x}\r\n".encode() + b"y" * 1000 + b"\r\n1\r\n"
    with serving(tmp_path) as server:
        got = exchange(server.port, data)
        too_big = exchange(server.port, big)
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\nabc" + body), got[:200]
    assert too_big.startswith(b"HTTP/1.1 413 "), too_big


@pytest.mark.parametrize(
    "lengths",
    [
        [b"\xb2"],  # '²': str.isdigit() says yes, int() raises
        [b"+3"],
        [b"3 3"],
        [b"12345678901234567890"],
        [b"3", b"4"],
    ],
)
def test_bad_content_lengths_are_400(tmp_path: Path, lengths: list[bytes]) -> None:
    head = b"".join(b"Content-Length: " + v + b"\r\n" for v in lengths)
    with serving(tmp_path) as server:
        got = exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\n" + head + b"\r\nabc")
    assert got.startswith(b"HTTP/1.1 400 "), got


def test_a_body_is_read_only_once_its_request_has_a_slot(tmp_path: Path) -> None:
    """With every slot taken, a request waits for one before its body is read; at the
    timeout it gets 503 although its body was never sent."""
    with serving(tmp_path, timeout=0.5, concurrency=1) as server:
        assert server.slots.acquire(timeout=10)
        try:
            got = exchange(server.port, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
        finally:
            server.slots.release()
        echoed = exchange(
            server.port, b"POST / HTTP/1.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
        )
    assert got.startswith(b"HTTP/1.1 503 ") and b"\r\nConnection: close\r\n" in got, got
    assert echoed.startswith(b"HTTP/1.1 200 ") and echoed.endswith(b"\r\n\r\nabc"), echoed


def test_connections_are_counted_before_their_thread_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of connections while the first ones' threads have not started yet: the
    limit still holds (the rest are closed at once)."""
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 2)
    setup = server_module._Connection.setup

    def slow_setup(self: server_module._Connection) -> None:
        time.sleep(1.0)
        setup(self)

    monkeypatch.setattr(server_module._Connection, "setup", slow_setup)
    request_ = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with serving(tmp_path) as server:
        conns = [socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD)]
        for _ in range(3):
            conns.append(socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD))
        answers = []
        for conn in conns:
            got = b""
            with conn, contextlib.suppress(OSError):
                conn.sendall(request_)
                while chunk := conn.recv(65536):
                    got += chunk
            answers.append(got)
    assert sum(a.startswith(b"HTTP/1.1 200 ") for a in answers) == 2, answers
    assert answers.count(b"") == 2, answers


def test_answers_of_the_http_parser_are_logged(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with serving(tmp_path) as server:
        unknown = exchange(server.port, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
        bad = exchange(server.port, b"garbage\r\n\r\n")
        long_header = exchange(server.port, b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n")
    assert unknown.startswith(b"HTTP/1.1 501 ") and bad.startswith(b"HTTP/1.1 400 ")
    assert long_header.startswith(b"HTTP/1.1 431 "), long_header
    log = capfd.readouterr().out.splitlines()
    assert any(
        line.endswith('"BREW /pot HTTP/1.1" 501 ' + str(len(unknown.split(b"\r\n\r\n", 1)[1])))
        for line in log
    ), log
    assert any('"garbage" 400 ' in line for line in log), log
    assert any('"GET / HTTP/1.1" 431 ' in line for line in log), log


def test_a_connection_error_is_one_line_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving(tmp_path) as server:

        def reset(request: cgi.Request) -> cgi.Response:
            raise ConnectionResetError(104, "Connection reset by peer")

        monkeypatch.setattr(server, "respond", reset)
        exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if "ConnectionResetError" in line] == [
        "wagi: 127.0.0.1: the connection ended: ConnectionResetError: "
        "[Errno 104] Connection reset by peer"
    ], err


def test_the_signal_handler_takes_no_lock(tmp_path: Path) -> None:
    """Python runs a signal handler in the main thread between two bytecodes, maybe while
    that thread holds a lock (the drain loop's wait): a handler that takes a lock (as
    threading.Event.set does) can deadlock it. Every C call the handler makes is watched."""
    lock_types = (type(threading.Lock()), type(threading.RLock()))
    with serving(tmp_path) as server:
        calls: list[object] = []

        def watch(frame: object, event: str, arg: object) -> None:
            if event == "c_call" and isinstance(getattr(arg, "__self__", None), lock_types):
                calls.append(arg)

        sys.setprofile(watch)
        try:
            server._on_signal(signal.SIGTERM, None)
        finally:
            sys.setprofile(None)
    assert calls == [], calls
