"""The sans-IO ttrpc codec: frames, envelopes, and the server/client stream rules."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.errors import Code
from shim.ttrpc.connection import (
    ClientConnection,
    ConnectionClosed,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
    StreamError,
)
from shim.ttrpc.frames import (
    HEADER_SIZE,
    EndOfStream,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    ProtocolError,
    RefusedFrame,
    encode_frame,
    encode_header,
)
from shim.ttrpc.limits import Budget, Limits
from shim.ttrpc.messages import (
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    metadata_dict,
    metadata_pairs,
)

TTRPC_MAX_PAYLOAD = 4 << 20  # containerd/ttrpc: messageLengthMax


def drain(source: FrameDecoder | ServerConnection | ClientConnection) -> list[object]:
    events = []
    while (event := source.next_event()) is not None:
        events.append(event)
    return events


def request_frame(stream_id: int, method: str = "M", payload: bytes = b"") -> bytes:
    req = Request(service="test.S", method=method, payload=payload)
    return encode_frame(stream_id, FrameType.REQUEST, encode_request(req))


# -- header and frames -----------------------------------------------------------------


def test_header_layout_is_big_endian_10_bytes() -> None:
    header = encode_header(0x01020304, 0x0A0B0C0D, FrameType.RESPONSE, 0x4)
    assert header == bytes([1, 2, 3, 4, 0xA, 0xB, 0xC, 0xD, 2, 4])


@pytest.mark.parametrize(
    ("length", "stream_id", "type_", "flags"),
    [(-1, 1, 1, 0), (1, 2**32, 1, 0), (1, 1, 256, 0), (1, 1, 1, 256), (1, -3, 1, 0)],
)
def test_header_fields_out_of_range_are_local_errors(
    length: int, stream_id: int, type_: int, flags: int
) -> None:
    with pytest.raises(ProtocolError) as info:
        encode_header(length, stream_id, type_, flags)
    assert info.value.remote is False


def test_encode_refuses_oversized_payload() -> None:
    with pytest.raises(ProtocolError) as info:
        encode_frame(1, FrameType.REQUEST, bytes(TTRPC_MAX_PAYLOAD + 1))
    assert info.value.code == Code.RESOURCE_EXHAUSTED
    assert len(encode_frame(1, FrameType.REQUEST, bytes(TTRPC_MAX_PAYLOAD))) == (
        TTRPC_MAX_PAYLOAD + 10
    )


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=300),
)
def test_frame_round_trip(stream_id: int, type_: int, flags: int, payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(stream_id, type_, payload, flags))
    assert drain(decoder) == [Frame(stream_id, type_, flags, payload)]


def test_frames_fed_one_byte_at_a_time() -> None:
    wire = encode_frame(1, 1, b"hello") + encode_frame(3, 1, b"") + encode_frame(5, 2, b"x" * 70)
    decoder = FrameDecoder()
    events: list[object] = []
    for i in range(len(wire)):
        decoder.receive_data(wire[i : i + 1])
        events.extend(drain(decoder))
        assert decoder.buffered <= HEADER_SIZE + 70
    assert events == [Frame(1, 1, 0, b"hello"), Frame(3, 1, 0, b""), Frame(5, 2, 0, b"x" * 70)]


def test_several_frames_in_one_chunk() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"".join(encode_frame(i, 1, bytes([i]) * i) for i in range(1, 40, 2)))
    assert [f.stream_id for f in drain(decoder)] == list(range(1, 40, 2))


def test_end_of_stream_clean_and_truncated() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(1, 1, b"abc"))
    decoder.receive_data(b"")
    assert drain(decoder) == [Frame(1, 1, 0, b"abc"), EndOfStream(truncated=False)]
    assert decoder.next_event() is None

    cut = FrameDecoder()
    cut.receive_data(encode_frame(1, 1, b"abc")[:-1])
    cut.receive_data(b"")
    assert drain(cut) == [EndOfStream(truncated=True)]
    with pytest.raises(ProtocolError):
        cut.receive_data(b"more")


def test_oversized_frame_is_skipped_without_buffering() -> None:
    limit = 64
    decoder = FrameDecoder(max_payload=limit)
    body = b"z" * 1000
    decoder.receive_data(encode_header(len(body), 7, FrameType.REQUEST))
    assert drain(decoder) == [OversizedFrame(stream_id=7, type=1, length=1000)]
    for i in range(0, len(body), 33):
        decoder.receive_data(body[i : i + 33])
        assert decoder.buffered == 0
        assert drain(decoder) == []
    decoder.receive_data(encode_frame(9, 1, b"next"))
    assert drain(decoder) == [Frame(9, 1, 0, b"next")]


def test_oversized_frame_in_one_chunk_with_a_following_frame() -> None:
    decoder = FrameDecoder(max_payload=8)
    wire = encode_header(20, 1, 1) + bytes(20) + encode_frame(3, 1, b"ok")
    decoder.receive_data(wire)
    assert drain(decoder) == [OversizedFrame(1, 1, 20), Frame(3, 1, 0, b"ok")]


def test_refused_frame_is_skipped_without_buffering_and_the_next_decodes() -> None:
    asked: list[tuple[int, int, int]] = []

    def admit(stream_id: int, type_: int, length: int) -> bool:
        asked.append((stream_id, type_, length))
        return length < 100

    decoder = FrameDecoder(admit=admit)
    body = b"z" * 1000
    decoder.receive_data(encode_header(len(body), 7, FrameType.REQUEST) + body[:500])
    assert drain(decoder) == [RefusedFrame(stream_id=7, type=1, length=1000)]
    assert decoder.buffered == 0
    decoder.receive_data(body[500:] + encode_frame(9, 1, b"next"))
    assert drain(decoder) == [Frame(9, 1, 0, b"next")]
    assert asked == [(7, 1, 1000), (9, 1, 4)]


def test_an_admitted_payload_is_one_buffer_of_its_announced_length() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_header(1000, 1, FrameType.REQUEST) + b"a" * 10)
    assert drain(decoder) == []
    assert decoder.in_frame and decoder.buffered == 1000 and decoder.frames_admitted == 1
    for _ in range(99):
        decoder.receive_data(b"a" * 10)
        assert decoder.buffered == 1000
    assert drain(decoder) == [Frame(1, 1, 0, b"a" * 1000)]
    assert not decoder.in_frame and decoder.buffered == 0


# -- memory caps (limits.py) -----------------------------------------------------------

SMALL_LIMITS = Limits(
    connection_bytes=3000,
    server_bytes=5000,
    small_frame=300,
    small_reserve=1000,
    call_overhead=100,
)


def padded_request(stream_id: int, size: int) -> bytes:
    """A Request frame whose payload is exactly ``size`` bytes."""
    body = encode_request(Request(service="test.S", method="M", payload=b""))
    pad = size - len(body) - 3  # field 3 (payload): tag, two-byte length, bytes
    body = encode_request(Request(service="test.S", method="M", payload=b"p" * pad))
    assert len(body) == size, len(body)
    return encode_frame(stream_id, FrameType.REQUEST, body)


def test_a_connection_holds_its_calls_until_they_are_released() -> None:
    budget = Budget(SMALL_LIMITS)
    conn = ServerConnection(budget=budget)
    conn.receive_data(padded_request(1, 700) + padded_request(3, 700) + padded_request(5, 200))
    first, second, third = drain(conn)
    # Each is charged twice its length plus the overhead: 2 x 700 + 100.
    assert isinstance(first, RequestReceived) and first.charge == 1500
    assert isinstance(second, RequestReceived) and second.charge == 1500
    # 3000 held: a third call (2 x 200 + 100) would pass the connection's 3000.
    assert isinstance(third, StreamError) and third.code == Code.RESOURCE_EXHAUSTED
    assert "this connection" in third.message and "3000" in third.message
    assert conn.held == budget.used == 3000
    conn.release(first.charge)
    assert conn.held == budget.used == 1500
    conn.receive_data(padded_request(7, 200))
    (fourth,) = drain(conn)
    assert isinstance(fourth, RequestReceived) and fourth.charge == 500
    conn.close()
    assert conn.held == budget.used == 0
    conn.release(second.charge)  # after close: nothing more to give back
    assert budget.used == 0


def test_connections_share_the_server_budget_and_small_frames_keep_a_reserve() -> None:
    budget = Budget(SMALL_LIMITS)
    a, b = ServerConnection(budget=budget), ServerConnection(budget=budget)
    a.receive_data(padded_request(1, 1200)[:600])  # a big frame, half sent: charged 2500
    assert drain(a) == [] and a.in_frame and budget.used == 2500
    b.receive_data(padded_request(1, 725))  # big: 1550 > 5000 - 2500 - the 1000 reserve
    (refused,) = drain(b)
    assert isinstance(refused, StreamError) and refused.code == Code.RESOURCE_EXHAUSTED
    assert "the shim already holds 2500 bytes" in refused.message
    assert budget.used == 2500 and b.held == 0
    b.receive_data(padded_request(3, 200))  # small (up to 300 bytes): may use the reserve
    (small,) = drain(b)
    assert isinstance(small, RequestReceived) and budget.used == 2500 + 500
    a.close()  # the half-sent frame's charge comes back with the connection
    assert budget.used == 500


def test_frames_that_are_not_calls_give_their_charge_back_at_once() -> None:
    budget = Budget(SMALL_LIMITS)
    conn = ServerConnection(budget=budget)
    conn.receive_data(
        encode_frame(2, FrameType.REQUEST, b"even")  # rejected: even id
        + encode_frame(1, FrameType.REQUEST, b"\xff\xff")  # rejected: does not decode
        + encode_frame(3, FrameType.RESPONSE, b"ignored")
        + encode_frame(5, FrameType.DATA, b"data")
    )
    assert [type(e).__name__ for e in drain(conn)] == ["StreamError"] * 3
    assert conn.held == budget.used == 0


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=600), max_size=12))
def test_the_budget_never_passes_its_caps_and_close_returns_it(chunks: list[bytes]) -> None:
    budget = Budget(SMALL_LIMITS)
    conn = ServerConnection(max_payload=4000, budget=budget)
    for chunk in chunks:
        if chunk:
            conn.receive_data(chunk)
        for event in drain(conn):
            if isinstance(event, RequestReceived):
                conn.release(event.charge)
        assert budget.used == conn.held <= SMALL_LIMITS.connection_bytes
    conn.close()
    assert budget.used == 0


# -- envelopes -------------------------------------------------------------------------


def test_request_round_trip_keeps_metadata_order() -> None:
    req = Request(
        service="containerd.task.v2.Task",
        method="Create",
        payload=b"\x0a\x03abc",
        timeout_nano=5_000_000_000,
        metadata=(("containerd-namespace-ttrpc", "default"), ("k", "a"), ("k", "b")),
    )
    assert decode_request(encode_request(req)) == req


def test_response_round_trip_and_ok_status_on_wire() -> None:
    ok = Response(payload=b"\x08\x01")
    assert decode_response(encode_response(ok)) == ok
    # The OK status is still present as an (empty) field 1 submessage, as ttrpc-go sends it.
    assert encode_response(Response()) == b"\x0a\x00"
    err = Response(code=Code.NOT_FOUND, message="no such task")
    assert decode_response(encode_response(err)) == err
    assert not err.ok


def test_metadata_helpers_lower_case_and_group() -> None:
    pairs = metadata_pairs({"Containerd-Namespace-TTRPC": "ns", "x": ["1", "2"]})
    assert pairs == (("containerd-namespace-ttrpc", "ns"), ("x", "1"), ("x", "2"))
    assert metadata_dict((*pairs, ("X", "3"))) == {
        "containerd-namespace-ttrpc": ("ns",),
        "x": ("1", "2", "3"),
    }


def test_malformed_envelopes_raise_protocol_error() -> None:
    for bad in (b"\xff", b"\x0a\x05ab", b"\x12\x02\xff\xfe"):
        with pytest.raises(ProtocolError) as info:
            decode_request(bad)
        assert info.value.remote is True
    with pytest.raises(ProtocolError):
        decode_response(b"\x0a\x05\x08")


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_envelope_decoders_raise_only_protocol_error(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        with contextlib.suppress(ProtocolError):
            decode(data)


# -- server rules ----------------------------------------------------------------------


def test_server_accepts_odd_increasing_requests() -> None:
    conn = ServerConnection()
    conn.receive_data(request_frame(1, "A") + request_frame(3, "B") + request_frame(11, "C"))
    events = drain(conn)
    assert [(e.stream_id, e.request.method) for e in events] == [(1, "A"), (3, "B"), (11, "C")]
    assert conn.last_stream_id == 11
    assert conn.owed == 3


def test_server_rejects_even_stream_id_and_keeps_going() -> None:
    conn = ServerConnection()
    conn.receive_data(request_frame(2) + request_frame(1))
    even, good = drain(conn)
    assert even == StreamError(2, Code.INVALID_ARGUMENT, even.message)
    assert "odd" in even.message
    assert isinstance(good, RequestReceived) and good.stream_id == 1


@pytest.mark.parametrize("second", [5, 3, 1])
def test_server_rejects_non_increasing_stream_id(second: int) -> None:
    conn = ServerConnection()
    conn.receive_data(request_frame(5) + request_frame(second) + request_frame(7))
    first, bad, third = drain(conn)
    assert isinstance(first, RequestReceived)
    assert isinstance(bad, StreamError) and bad.code == Code.INVALID_ARGUMENT
    assert bad.stream_id == second
    assert "increment" in bad.message
    assert isinstance(third, RequestReceived) and third.stream_id == 7
    assert conn.last_stream_id == 7


def test_server_oversized_request_then_next_request_decodes() -> None:
    conn = ServerConnection(max_payload=100)
    big = Request(service="test.S", method="Big", payload=b"p" * 500)
    wire = encode_header(len(encode_request(big)), 1, FrameType.REQUEST) + encode_request(big)
    conn.receive_data(wire + request_frame(3, "Small"))
    oversized, small = drain(conn)
    assert oversized == StreamError(1, Code.RESOURCE_EXHAUSTED, oversized.message)
    assert isinstance(small, RequestReceived) and small.request.method == "Small"
    # The oversized stream id was not consumed: ids are counted on requests that were read.
    assert conn.last_stream_id == 3


def test_server_bad_request_payload_data_frames_and_ignored_types() -> None:
    conn = ServerConnection()
    conn.receive_data(
        encode_frame(1, FrameType.REQUEST, b"\xff\xff")
        + encode_frame(3, FrameType.DATA, b"")
        + encode_frame(5, FrameType.RESPONSE, b"")
        + encode_frame(7, 99, b"future")
        + request_frame(9)
    )
    events = drain(conn)
    assert [(type(e).__name__, e.stream_id) for e in events] == [
        ("StreamError", 1),
        ("StreamError", 3),
        ("RequestReceived", 9),
    ]
    assert all(e.code == Code.INVALID_ARGUMENT for e in events[:2])


def test_server_send_response_only_on_owed_streams() -> None:
    conn = ServerConnection()
    conn.receive_data(request_frame(1))
    drain(conn)
    with pytest.raises(ProtocolError):
        conn.send_response(3, Response())
    assert conn.owed == 1
    wire = conn.send_response(1, Response(payload=b"r"))
    assert conn.owed == 0
    with pytest.raises(ProtocolError):
        conn.send_response(1, Response())
    client_side = FrameDecoder()
    client_side.receive_data(wire)
    (frame,) = drain(client_side)
    assert frame.stream_id == 1 and frame.type == FrameType.RESPONSE
    assert decode_response(frame.payload) == Response(payload=b"r")


def test_server_oversized_response_becomes_resource_exhausted() -> None:
    conn = ServerConnection(max_payload=50)
    conn.receive_data(request_frame(1))
    drain(conn)
    wire = conn.send_response(1, Response(payload=b"x" * 200))
    length, sid, _, _ = struct.unpack(">IIBB", wire[:10])
    assert sid == 1
    assert decode_response(wire[10 : 10 + length]).code == Code.RESOURCE_EXHAUSTED


def test_server_connection_closed_event() -> None:
    conn = ServerConnection()
    conn.receive_data(request_frame(1)[:4])
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed(truncated=True)]


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=12), st.booleans())
def test_server_connection_survives_arbitrary_bytes(chunks: list[bytes], eof: bool) -> None:
    conn = ServerConnection(max_payload=32)
    for chunk in chunks:
        if chunk:
            conn.receive_data(chunk)
        for event in drain(conn):
            assert isinstance(event, RequestReceived | StreamError | ConnectionClosed)
            if isinstance(event, StreamError | RequestReceived):
                conn.send_response(event.stream_id, Response(code=Code.UNKNOWN))
    if eof:
        conn.receive_data(b"")
        assert isinstance(drain(conn)[-1], ConnectionClosed)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_decoder_and_client_raise_nothing_on_arbitrary_bytes(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_payload=16)
    client = ClientConnection(max_payload=16)
    for i in range(8):
        client.send_request(Request(service="s", method=str(i)))
    for chunk in chunks:
        if chunk:
            decoder.receive_data(chunk)
            client.receive_data(chunk)
        drain(decoder)
        for event in drain(client):
            assert isinstance(event, ResponseReceived)


# -- client rules ----------------------------------------------------------------------


def test_client_stream_ids_odd_and_increasing() -> None:
    client = ClientConnection()
    ids = [client.send_request(Request(service="s", method="m"))[0] for _ in range(5)]
    assert ids == [1, 3, 5, 7, 9]
    assert client.pending == frozenset(ids)


def test_client_matches_responses_and_drops_strays() -> None:
    client = ClientConnection(max_payload=40)
    a, wire_a = client.send_request(Request(service="s", method="a"))
    b, _ = client.send_request(Request(service="s", method="b"))
    c, _ = client.send_request(Request(service="s", method="c"))
    assert decode_request(wire_a[10:]).method == "a"
    client.forget(c)
    server_wire = (
        encode_frame(b, FrameType.RESPONSE, encode_response(Response(payload=b"B")))
        + encode_frame(99, FrameType.RESPONSE, encode_response(Response()))  # unknown stream
        + encode_frame(c, FrameType.RESPONSE, encode_response(Response()))  # forgotten
        + encode_frame(a, FrameType.DATA, b"")  # not a response
        + encode_header(100, a, FrameType.RESPONSE)
        + bytes(100)  # oversized
    )
    client.receive_data(server_wire)
    assert drain(client) == [
        ResponseReceived(b, Response(payload=b"B")),
        ResponseReceived(a, Response(code=Code.RESOURCE_EXHAUSTED, message=drain_msg(100, 40))),
    ]
    assert client.pending == frozenset()


def drain_msg(length: int, limit: int) -> str:
    return f"message length {length} exceed maximum message size of {limit}"


def test_client_refuses_oversized_request_without_consuming_an_id() -> None:
    client = ClientConnection(max_payload=30)
    with pytest.raises(ProtocolError) as info:
        client.send_request(Request(service="s", method="m", payload=b"x" * 40))
    assert info.value.code == Code.RESOURCE_EXHAUSTED
    assert client.send_request(Request(service="s", method="m"))[0] == 1
