"""The asyncio ttrpc server and client over real unix sockets in tmp_path."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import empty_pb2, wrappers_pb2

from shim.errors import (
    Code,
    DeadlineExceeded,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    Unknown,
)
from shim.ttrpc.client import Client, socket_path
from shim.ttrpc.connection import ClientConnection, ResponseReceived
from shim.ttrpc.frames import FrameType, encode_frame, encode_header
from shim.ttrpc.limits import Limits
from shim.ttrpc.messages import Request, encode_request
from shim.ttrpc.server import CallContext, Method, PeerCredentials, Server, same_user
from tests.prereq import needs

SVC = "test.v1.Echo"
TTRPC_MAX_PAYLOAD = 4 << 20  # containerd/ttrpc: messageLengthMax
Str = wrappers_pb2.StringValue


def asynctest(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on a fresh loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


class EchoService:
    """A test service whose slow methods are driven by events, never by sleeps."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.contexts: list[CallContext] = []

    async def echo(self, req: Str, ctx: CallContext) -> Str:
        return Str(value=f"echo:{req.value}")

    async def slow(self, req: Str, ctx: CallContext) -> Str:
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Str(value=f"slow:{req.value}")

    async def fail(self, req: Str, ctx: CallContext) -> Str:
        raise NotFound(f"no such thing: {req.value}")

    async def crash(self, req: Str, ctx: CallContext) -> Str:
        raise RuntimeError("boom")

    async def wrong_type(self, req: Str, ctx: CallContext) -> Any:
        return empty_pb2.Empty()

    async def meta(self, req: Str, ctx: CallContext) -> Str:
        self.contexts.append(ctx)
        return Str(value=ctx.namespace or "")

    def methods(self) -> dict[str, Any]:
        return {
            "Echo": (self.echo, Str),
            "Slow": (self.slow, Str),
            "Fail": (self.fail, Str),
            "Crash": (self.crash, Str),
            "WrongType": Method(self.wrong_type, Str, Str),
            "Meta": (self.meta, Str),
        }


async def serving(tmp_path: Path, **kwargs: Any) -> tuple[Server, EchoService, str]:
    service = EchoService()
    server = Server(**kwargs)
    server.register_service(SVC, service.methods())
    path = str(tmp_path / "t.sock")
    await server.start(path)
    return server, service, path


async def raw_exchange(path: str, wire: bytes, answers: int) -> list[ResponseReceived]:
    """Send raw bytes, collect ``answers`` responses for streams 1, 3, 5, ... in any order."""
    reader, writer = await asyncio.open_unix_connection(path)
    proto = ClientConnection()
    for _ in range(answers):
        proto.send_request(Request(service="x", method="y"))  # registers ids 1, 3, 5...
    writer.write(wire)
    got: list[ResponseReceived] = []
    while len(got) < answers:
        data = await reader.read(65536)
        proto.receive_data(data)
        while (event := proto.next_event()) is not None:
            assert isinstance(event, ResponseReceived), event
            got.append(event)
    writer.close()
    return got


def request_wire(stream_id: int, method: str, value: str = "", timeout_nano: int = 0) -> bytes:
    req = Request(SVC, method, Str(value=value).SerializeToString(), timeout_nano)
    return encode_frame(stream_id, FrameType.REQUEST, encode_request(req))


@asynctest
async def test_hundred_concurrent_calls_on_one_connection(tmp_path: Path) -> None:
    server, _, path = await serving(tmp_path)
    async with await Client.connect(path) as client:
        results = await asyncio.gather(
            *(client.call(SVC, "Echo", Str(value=str(i)), Str) for i in range(100))
        )
    assert [r.value for r in results] == [f"echo:{i}" for i in range(100)]
    await server.shutdown()


@asynctest
async def test_calls_across_ten_connections(tmp_path: Path) -> None:
    server, _, path = await serving(tmp_path)
    clients = [await Client.connect(f"unix://{path}") for _ in range(10)]
    calls = [
        clients[c].call(SVC, "Echo", Str(value=f"{c}-{i}"), Str)
        for c in range(10)
        for i in range(10)
    ]
    results = await asyncio.gather(*calls)
    assert [r.value for r in results] == [f"echo:{c}-{i}" for c in range(10) for i in range(10)]
    for client in clients:
        await client.close()
    await server.shutdown()


@asynctest
async def test_slow_call_does_not_block_fast_call_on_same_connection(tmp_path: Path) -> None:
    server, svc, path = await serving(tmp_path)
    client = await Client.connect(path)
    slow = asyncio.create_task(client.call(SVC, "Slow", Str(value="s"), Str))
    await svc.entered.wait()
    fast = await client.call(SVC, "Echo", Str(value="f"), Str)
    assert fast.value == "echo:f"
    assert not slow.done()
    svc.release.set()
    assert (await slow).value == "slow:s"
    await client.close()
    await server.shutdown()


@asynctest
async def test_unknown_service_and_method_are_unimplemented(tmp_path: Path) -> None:
    server, _, path = await serving(tmp_path)
    async with await Client.connect(path) as client:
        with pytest.raises(Unimplemented, match=r"service no\.Such"):
            await client.call("no.Such", "Echo", Str(), Str)
        with pytest.raises(Unimplemented, match="method Nope"):
            await client.call(SVC, "Nope", Str(), Str)
        # The connection survives errors.
        assert (await client.call(SVC, "Echo", Str(value="x"), Str)).value == "echo:x"
    await server.shutdown()


@asynctest
async def test_handler_errors_map_to_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, _, path = await serving(tmp_path)
    async with await Client.connect(path) as client:
        with caplog.at_level(logging.ERROR, logger="shim.ttrpc.server"):
            with pytest.raises(NotFound) as nf:
                await client.call(SVC, "Fail", Str(value="abc"), Str)
            assert nf.value.message == "no such thing: abc"
            assert not caplog.records  # expected errors are not logged
            with pytest.raises(Unknown) as unk:
                await client.call(SVC, "Crash", Str(), Str)
            assert unk.value.message == "RuntimeError: boom"
            assert len(caplog.records) == 1
            assert caplog.records[0].exc_info is not None
        with pytest.raises(Unknown, match="expected StringValue"):
            await client.call(SVC, "WrongType", Str(), Str)
    await server.shutdown()


@asynctest
async def test_bad_argument_payload_is_invalid_argument(tmp_path: Path) -> None:
    server, _, path = await serving(tmp_path)
    req = Request(SVC, "Echo", b"\x0a\x09short")
    wire = encode_frame(1, FrameType.REQUEST, encode_request(req))
    (answer,) = await raw_exchange(path, wire, 1)
    assert answer.response.code == 3
    await server.shutdown()


@asynctest
async def test_timeout_nano_cancels_handler_with_deadline_exceeded(tmp_path: Path) -> None:
    server, svc, path = await serving(tmp_path)
    (answer,) = await raw_exchange(path, request_wire(1, "Slow", timeout_nano=20_000_000), 1)
    assert answer.response.code == 4
    assert svc.cancelled.is_set()
    await server.shutdown()


@asynctest
async def test_client_timeout_raises_deadline_exceeded(tmp_path: Path) -> None:
    server, svc, path = await serving(tmp_path)
    async with await Client.connect(path) as client:
        with pytest.raises(DeadlineExceeded):
            await client.call(SVC, "Slow", Str(), Str, timeout=0.02)
        await svc.cancelled.wait()  # the server gave up too: timeout_nano was sent
        assert (await client.call(SVC, "Echo", Str(value="y"), Str)).value == "echo:y"
    await server.shutdown()


@asynctest
async def test_metadata_namespace_and_deadline_reach_handler(tmp_path: Path) -> None:
    server, svc, path = await serving(tmp_path)
    async with await Client.connect(path) as client:
        meta = {"containerd-namespace-ttrpc": "k8s.io", "X-Trace": ["a", "b"]}
        reply = await client.call(SVC, "Meta", Str(), Str, timeout=30, metadata=meta)
        await client.call(SVC, "Meta", Str(), Str)
    assert reply.value == "k8s.io"
    with_deadline, without = svc.contexts
    assert with_deadline.get("x-trace") == "a"
    assert with_deadline.metadata["x-trace"] == ("a", "b")
    assert with_deadline.deadline is not None
    assert 0 < with_deadline.deadline - asyncio.get_running_loop().time() <= 30
    assert without.deadline is None and without.namespace is None
    assert with_deadline.peer == PeerCredentials(os.getpid(), os.geteuid(), os.getegid())
    await server.shutdown()


@asynctest
async def test_oversized_request_gets_resource_exhausted_and_connection_lives(
    tmp_path: Path,
) -> None:
    server, _, path = await serving(tmp_path)
    size = TTRPC_MAX_PAYLOAD + 1
    wire = (
        encode_header(size, 1, FrameType.REQUEST) + b"\0" * size + request_wire(3, "Echo", "after")
    )
    first, second = sorted(await raw_exchange(path, wire, 2), key=lambda r: r.stream_id)
    assert first.response.code == 8
    assert second.response.code == 0
    assert Str.FromString(second.response.payload).value == "echo:after"
    await server.shutdown()


@asynctest
async def test_client_refuses_oversized_request_locally(tmp_path: Path) -> None:
    server, _, path = await serving(tmp_path)
    async with await Client.connect(path) as client:
        with pytest.raises(ResourceExhausted):
            await client.call(SVC, "Echo", Str(value="x" * TTRPC_MAX_PAYLOAD), Str)
        assert (await client.call(SVC, "Echo", Str(value="z"), Str)).value == "echo:z"
    await server.shutdown()


@asynctest
async def test_stream_id_violations_answered_on_live_server(tmp_path: Path) -> None:
    server, _, path = await serving(tmp_path)
    wire = request_wire(5, "Echo", "a") + request_wire(2, "Echo") + request_wire(3, "Echo")
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(wire)
    codes: dict[int, int] = {}
    proto = ClientConnection()
    proto._pending.update({2, 3, 5})  # a raw peer: accept answers on whatever ids we used
    while len(codes) < 3:
        proto.receive_data(await reader.read(65536))
        while (event := proto.next_event()) is not None:
            assert isinstance(event, ResponseReceived)
            codes[event.stream_id] = event.response.code
    assert codes == {5: 0, 2: 3, 3: 3}
    writer.close()
    await server.shutdown()


@asynctest
async def test_graceful_shutdown_finishes_inflight_call(tmp_path: Path) -> None:
    server, svc, path = await serving(tmp_path)
    client = await Client.connect(path)
    slow = asyncio.create_task(client.call(SVC, "Slow", Str(value="last"), Str))
    await svc.entered.wait()
    stopping = asyncio.create_task(server.shutdown(grace=3600))
    await asyncio.sleep(0)  # shutdown closes the listener before its first await
    with pytest.raises(Unavailable):
        await Client.connect(path)
    # A new call on the open connection is turned away while the old one finishes.
    with pytest.raises(Unavailable, match="shutting down"):
        await client.call(SVC, "Echo", Str(), Str)
    assert not stopping.done()
    svc.release.set()
    assert (await slow).value == "slow:last"
    await stopping
    assert not svc.cancelled.is_set()
    with pytest.raises(Unavailable):
        await client.call(SVC, "Echo", Str(), Str)
    await client.close()


@asynctest
async def test_shutdown_grace_expiry_cancels_and_client_sees_unavailable(tmp_path: Path) -> None:
    server, svc, path = await serving(tmp_path)
    client = await Client.connect(path)
    slow = asyncio.create_task(client.call(SVC, "Slow", Str(), Str))
    await svc.entered.wait()
    await server.shutdown(grace=0)
    assert svc.cancelled.is_set()
    with pytest.raises(Unavailable):
        await slow
    assert client.closed
    await client.close()


@asynctest
async def test_client_disconnect_cancels_its_calls(tmp_path: Path) -> None:
    server, svc, path = await serving(tmp_path)
    client = await Client.connect(path)
    slow = asyncio.create_task(client.call(SVC, "Slow", Str(), Str))
    await svc.entered.wait()
    await client.close()
    with pytest.raises(Unavailable):
        await slow
    await svc.cancelled.wait()
    await server.shutdown()


@asynctest
async def test_serves_on_an_already_listening_socket(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "bound.sock")
    listener.bind(path)
    listener.listen()
    server = Server()
    server.register_service(SVC, EchoService().methods())
    await server.start(sock=listener)
    async with await Client.connect(path) as client:
        assert (await client.call(SVC, "Echo", Str(value="s"), Str)).value == "echo:s"
    await server.shutdown()


@asynctest
async def test_connect_to_missing_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        await Client.connect(str(tmp_path / "absent.sock"))


def test_socket_path_forms() -> None:
    assert socket_path("unix:///run/x.sock") == "/run/x.sock"
    assert socket_path("/run/containerd/containerd.sock.ttrpc") == (
        "/run/containerd/containerd.sock.ttrpc"
    )
    with pytest.raises(Exception, match="only unix"):
        socket_path("tcp://127.0.0.1:1")


def test_register_service_rejects_duplicates() -> None:
    server = Server()
    server.register_service(SVC, EchoService().methods())
    with pytest.raises(ValueError):
        server.register_service(SVC, {})


def test_same_user_needs_uid_and_gid() -> None:
    uid, gid = os.geteuid(), os.getegid()
    assert same_user(PeerCredentials(1, uid, gid))
    assert not same_user(PeerCredentials(1, uid + 1, gid))
    assert not same_user(PeerCredentials(1, uid, gid + 1))


def _connect_as(address: bytes, wire: bytes, user: int | None) -> int:
    """Fork a child that (optionally) becomes ``user``, connects, sends ``wire`` and reports
    how many bytes came back before the server closed or answered."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        status = 1
        try:
            if user is not None:
                os.setgroups([])
                os.setgid(user)
                os.setuid(user)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(address)
                try:
                    s.sendall(wire)
                    received = len(s.recv(65536))
                except (ConnectionResetError, BrokenPipeError):  # closed on us, unanswered
                    received = 0
                os.write(w, str(received).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    try:
        return int(os.read(r, 64) or b"-1")
    finally:
        os.close(r)
        os.waitpid(pid, 0)


@needs(os.geteuid() == 0, "needs root to connect as another user")
@asynctest
async def test_peer_with_other_uid_is_refused() -> None:
    # An abstract socket: reachable by any user, which is what the credential check is for.
    address = f"\0ttrpc-test-{os.getpid()}".encode()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen()
    server = Server()
    server.register_service(SVC, EchoService().methods())
    await server.start(sock=listener)
    wire = request_wire(1, "Echo")
    assert await asyncio.to_thread(_connect_as, address, wire, None) > 0  # our user: answered
    assert await asyncio.to_thread(_connect_as, address, wire, 65534) == 0  # nobody: closed
    await server.shutdown()


# -- memory caps and deadlines (shim/ttrpc/limits.py) -----------------------------------


async def answer_or_close(reader: asyncio.StreamReader, timeout: float) -> int | None:
    """The status code of the first answer on the connection, or None if it was closed."""
    proto = ClientConnection()
    proto._pending.add(1)  # a raw peer: it sent stream 1 itself
    async with asyncio.timeout(timeout):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionError:
                return None
            if not data:
                return None
            proto.receive_data(data)
            event = proto.next_event()
            if isinstance(event, ResponseReceived):
                return event.response.code


@asynctest
async def test_fifty_half_sent_frames_are_bounded_refused_and_dropped(tmp_path: Path) -> None:
    limits = Limits(frame_timeout=0.5)
    server, _, path = await serving(tmp_path, limits=limits)
    half = encode_header(TTRPC_MAX_PAYLOAD, 1, FrameType.REQUEST) + b"\0" * (1 << 20)
    peers = []
    peak = 0
    for _ in range(50):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(half)
        peers.append((reader, writer))
        await asyncio.sleep(0.01)
        peak = max(peak, server.budget.used)
    outcomes = await asyncio.gather(*(answer_or_close(r, 10) for r, _ in peers))
    peak = max(peak, server.budget.used)
    # As many 4 MiB frames as fit the shim's budget less the reserve for small frames are
    # admitted (one, by default); the other accepted connections are answered
    # RESOURCE_EXHAUSTED, those past the limit are closed, and those whose frames never
    # finish are dropped after the frame deadline.
    admitted = (limits.server_bytes - limits.small_reserve) // server.budget.cost(TTRPC_MAX_PAYLOAD)
    assert admitted >= 1
    assert peak <= limits.server_bytes - limits.small_reserve
    assert outcomes.count(Code.RESOURCE_EXHAUSTED) == limits.max_connections - admitted, outcomes
    assert outcomes.count(None) == 50 - limits.max_connections + admitted, outcomes
    assert server.budget.used == 0
    for _, writer in peers:
        writer.close()
    async with await Client.connect(path) as client:
        assert (await client.call(SVC, "Echo", Str(value="ok"), Str)).value == "echo:ok"
    await server.shutdown()


@asynctest
async def test_connections_past_the_limit_are_closed(tmp_path: Path) -> None:
    server, _, path = await serving(tmp_path, limits=Limits(max_connections=2))
    first, second = await Client.connect(path), await Client.connect(path)
    for client in (first, second):  # both are being served
        assert (await client.call(SVC, "Echo", Str(value="x"), Str)).value == "echo:x"
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(request_wire(1, "Echo"))
    assert await answer_or_close(reader, 5) is None
    writer.close()
    await first.close()
    for _ in range(100):  # the server notices the close on its next read
        if len(server._connections) < 2:
            break
        await asyncio.sleep(0.01)
    async with await Client.connect(path) as third:
        assert (await third.call(SVC, "Echo", Str(value="y"), Str)).value == "echo:y"
    await second.close()
    await server.shutdown()


@asynctest
async def test_calls_in_flight_hold_their_charge_until_answered(tmp_path: Path) -> None:
    limits = Limits(connection_bytes=3 * 4096 + 500)
    server, svc, path = await serving(tmp_path, limits=limits)
    reader, writer = await asyncio.open_unix_connection(path)
    proto = ClientConnection()
    for _ in range(4):
        proto.send_request(Request(service="x", method="y"))  # expect answers on 1, 3, 5, 7
    writer.write(request_wire(1, "Slow", "a") + request_wire(3, "Slow", "b"))
    writer.write(request_wire(5, "Slow", "c") + request_wire(7, "Slow", "d"))
    codes: dict[int, int] = {}
    while 7 not in codes:  # the fourth pending call would pass 3 x 4 KiB + 500
        proto.receive_data(await reader.read(65536))
        while (event := proto.next_event()) is not None:
            assert isinstance(event, ResponseReceived)
            codes[event.stream_id] = event.response.code
    assert codes == {7: Code.RESOURCE_EXHAUSTED}
    assert server.budget.used > 3 * 4096
    svc.release.set()
    while len(codes) < 4:
        proto.receive_data(await reader.read(65536))
        while (event := proto.next_event()) is not None:
            assert isinstance(event, ResponseReceived)
            codes[event.stream_id] = event.response.code
    assert codes == {1: 0, 3: 0, 5: 0, 7: Code.RESOURCE_EXHAUSTED}
    for _ in range(100):
        if server.budget.used == 0:
            break
        await asyncio.sleep(0.01)
    assert server.budget.used == 0
    writer.close()
    await server.shutdown()


def _flood_without_reading(address: str, seconds: float) -> int:
    """Send 10-byte frames on an even stream id (each one answered INVALID_ARGUMENT) and
    never read; returns the bytes sent before the server dropped us or ``seconds`` passed."""
    frame = encode_header(0, 2, FrameType.REQUEST)
    chunk = frame * 6000
    sent = 0
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(address)
        try:
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                sent += s.send(chunk)
        except (ConnectionError, TimeoutError):
            pass
    return sent


@asynctest
async def test_a_peer_that_never_reads_is_held_back_then_dropped(tmp_path: Path) -> None:
    limits = Limits(frame_timeout=0.5)
    server, _, path = await serving(tmp_path, limits=limits)
    flood = asyncio.create_task(asyncio.to_thread(_flood_without_reading, path, 10))
    biggest = 0
    while not flood.done():
        for conn in server._connections:
            biggest = max(biggest, conn._writer.transport.get_write_buffer_size())
        await asyncio.sleep(0.005)
    sent = await flood
    # Past 64 KiB of unread answers the connection acts on nothing more (one answer over).
    assert 0 < biggest <= (64 << 10) + 1024, biggest
    assert sent < 64 << 20, sent  # it was dropped, not read from for ever
    async with await Client.connect(path) as client:
        assert (await client.call(SVC, "Echo", Str(value="z"), Str)).value == "echo:z"
    await server.shutdown()
