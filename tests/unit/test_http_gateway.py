"""The WAGI gateway's pure parts: the switch (annotations/env), the CGI environment and
response parsing, the spawn wire's HttpServing, and which signal a server gets."""

from __future__ import annotations

import asyncio
import signal

import pytest

from runtimes.base import Entrypoint, EntrypointKind, HttpMode, HttpServing, Preopen, RunConfig
from runtimes.wasmtime.http import cgi, switch
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
