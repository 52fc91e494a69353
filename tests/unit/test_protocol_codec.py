"""Frame codec: round trips, malformed/truncated/oversized/unknown input, property tests."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore import protocol as p

HEADER_VALUE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=50
)
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=30)
HEADERS = st.lists(st.tuples(TOKEN, HEADER_VALUE), max_size=20).map(tuple)


def decode_all(data: bytes) -> list[p.Frame]:
    return p.Decoder().feed(data)


def test_header_layout_is_ten_bytes_big_endian() -> None:
    raw = p.encode_data(0x01020304, b"abc", fin=True)
    assert raw[:10] == bytes([0x13, 0x01, 1, 2, 3, 4, 0, 0, 0, 3])
    assert raw[10:] == b"abc"


@settings(deadline=None)
@given(sid=st.integers(1, 2**32 - 1), data=st.binary(max_size=3000), fin=st.booleans())
def test_data_round_trip(sid: int, data: bytes, fin: bool) -> None:
    (frame,) = decode_all(p.encode_data(sid, data, fin))
    assert (frame.type, frame.stream_id, frame.payload, bool(frame.flags & p.FLAG_FIN)) == (
        p.FrameType.DATA,
        sid,
        data,
        fin,
    )


@settings(deadline=None)
@given(
    method=TOKEN,
    target=st.text(min_size=1, max_size=40).filter(lambda t: len(t.encode()) < 256),
    path=st.text(alphabet="abcdefghij/%?=&.-_0123456789", max_size=200).map(lambda s: "/" + s),
    headers=HEADERS,
    fin=st.booleans(),
)
def test_request_head_round_trip(method: str, target: str, path: str, headers, fin: bool) -> None:
    head = p.RequestHead(method, target, path, headers)
    (frame,) = decode_all(p.encode_request_head(7, head, fin))
    assert frame.type is p.FrameType.OPEN and bool(frame.flags & p.FLAG_FIN) == fin
    assert p.decode_request_head(frame.payload) == head


@settings(deadline=None)
@given(status=st.integers(100, 999), headers=HEADERS)
def test_response_head_round_trip(status: int, headers) -> None:
    (frame,) = decode_all(p.encode_response_head(3, p.ResponseHead(status, headers)))
    assert p.decode_response_head(frame.payload) == p.ResponseHead(status, headers)


def test_control_frames_round_trip() -> None:
    hello = p.Hello(
        limits=p.Limits(max_frame_size=65536, max_streams=9, heartbeat_ms=1500), capabilities=("a", "bb")
    )
    data = b"".join(
        [
            p.encode_hello(hello),
            p.encode_window(0, 12345),
            p.encode_window(5, 1),
            p.encode_ping(2**63 + 5),
            p.encode_pong(7),
            p.encode_reset(9, p.ErrorCode.TARGET_TIMEOUT, "slow"),
            p.encode_end(9),
            p.encode_goaway(41, p.ErrorCode.GOING_AWAY, "bye"),
        ]
    )
    frames = decode_all(data)
    assert [f.type for f in frames] == [
        p.FrameType.HELLO,
        p.FrameType.WINDOW,
        p.FrameType.WINDOW,
        p.FrameType.PING,
        p.FrameType.PONG,
        p.FrameType.RESET,
        p.FrameType.END,
        p.FrameType.GOAWAY,
    ]
    assert p.decode_hello(frames[0].payload) == hello
    assert p.decode_window(frames[1].payload) == 12345
    assert p.decode_ping(frames[3].payload) == 2**63 + 5
    assert p.decode_reset(frames[5].payload) == (p.ErrorCode.TARGET_TIMEOUT, "slow")
    assert p.decode_goaway(frames[7].payload) == (41, p.ErrorCode.GOING_AWAY, "bye")


def test_error_code_numbers_are_stable() -> None:
    # The wire carries numbers: reordering ErrorCode would silently break older peers.
    assert {c.value: n for c, n in p.CODE_NUMBERS.items()} == {
        "no-error": 0,
        "protocol-error": 1,
        "internal": 2,
        "flow-control": 3,
        "cancelled": 4,
        "too-many-streams": 5,
        "going-away": 6,
        "target-unknown": 7,
        "target-refused": 8,
        "target-timeout": 9,
        "tls-verify-failed": 10,
        "filtered": 11,
        "target-error": 12,
        "address-forbidden": 13,
        "bad-request": 14,
        "heartbeat-timeout": 15,
        "busy": 16,
    }


def test_unknown_reset_code_reads_as_internal() -> None:
    assert p.decode_reset(struct.pack("!H", 999) + b"x") == (p.ErrorCode.INTERNAL, "x")


@settings(deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_any_split_gives_the_same_frames(data: bytes, cuts: list[int]) -> None:
    stream = p.encode_data(1, data) + p.encode_ping(3) + p.encode_data(2, data[::-1], True)
    points = sorted({min(c, len(stream)) for c in cuts})
    dec = p.Decoder()
    frames = []
    last = 0
    for point in [*points, len(stream)]:
        frames += dec.feed(stream[last:point])
        last = point
    assert frames == decode_all(stream)
    assert dec.pending == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_only_ever_raises_protocol_error(data: bytes) -> None:
    dec = p.Decoder(max_frame_size=4096)
    try:
        for frame in dec.feed(data):
            for decode in (p.decode_request_head, p.decode_response_head, p.decode_hello, p.decode_goaway):
                with contextlib.suppress(p.ProtocolError):
                    decode(frame.payload)
    except p.ProtocolError:
        pass


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (bytes([0x2B, 0, 0, 0, 0, 1, 0, 0, 0, 0]), "version"),  # version 2
        (bytes([0x1F, 0, 0, 0, 0, 1, 0, 0, 0, 0]), "unknown frame type 15"),
        (bytes([0x10, 0, 0, 0, 0, 1, 0, 0, 0, 0]), "unknown frame type 0"),
        (p.encode_frame(p.FrameType.PING, 3, b"12345678"), "on stream 3"),
        (p.encode_frame(p.FrameType.DATA, 0, b"x"), "on stream 0"),
        (p.encode_frame(p.FrameType.PING, 0, b"123"), "8 bytes"),
        (p.encode_frame(p.FrameType.WINDOW, 1, b"12345"), "4 bytes"),
        (p.encode_frame(p.FrameType.END, 1, b"x"), "END frame with a payload"),
        (
            struct.pack("!BBII", 0x13, 0, 1, 2**31),
            "exceeds the limit",
        ),  # oversized: fails on the header alone
    ],
)
def test_malformed_frames(raw: bytes, message: str) -> None:
    dec = p.Decoder()
    with pytest.raises(p.ProtocolError, match=message):
        dec.feed(raw)
    with pytest.raises(p.ProtocolError, match="already failed"):
        dec.feed(p.encode_ping(1))


def test_oversized_header_block_is_refused() -> None:
    head = p.RequestHead("GET", "t", "/", (("x-big", "v" * 60000), ("x-big2", "v" * 10000)))
    with pytest.raises(p.ProtocolError, match="exceeds the limit"):
        p.Decoder(max_header_block=64 * 1024).feed(p.encode_request_head(1, head))


def test_truncated_frame_waits_for_more() -> None:
    raw = p.encode_data(1, b"hello")
    dec = p.Decoder()
    assert dec.feed(raw[:4]) == [] and dec.feed(raw[4:12]) == []
    assert dec.feed(raw[12:])[0].payload == b"hello"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x03GE",  # truncated method
        b"\x03GET\x01t\x00\x01x\x00\x00",  # path without leading slash
        b"\x03G T\x01t\x00\x01/\x00\x00",  # bad method token
        b"\x03GET\x01t\x00\x01/\x00\x01\x01\x00\x03xa\r\n",  # truncated header
        b"\x03GET\x01t\x00\x01/\x00\x01\x01\x00\x02a\r\n",  # CRLF in a header value
        b"\x03GET\x01t\x00\x01/\x00\x01\x02\x00\x01a:v",  # ':' in a header name
        b"\x03GET\x01t\x00\x01/\x00\x00junk",  # trailing bytes
        b"\x03GET\x01t\x00\x02/ \x00\x00",  # space in path
        b"\x03GET\x01\xff\x00\x01/\x00\x00",  # target not UTF-8
    ],
)
def test_malformed_request_heads(payload: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_request_head(payload)


def test_too_many_headers_refused_both_ways() -> None:
    many = tuple((f"h{i}", "v") for i in range(p.ABSOLUTE_MAX_HEADERS + 1))
    with pytest.raises(p.ProtocolError, match="too many headers"):
        p.encode_response_head(1, p.ResponseHead(200, many))
    payload = struct.pack("!HH", 200, p.ABSOLUTE_MAX_HEADERS + 1)
    with pytest.raises(p.ProtocolError, match="too many headers"):
        p.decode_response_head(payload)


def test_hello_bounds_and_version_negotiation() -> None:
    (frame,) = decode_all(p.encode_hello(p.Hello(limits=p.Limits(max_frame_size=10))))
    with pytest.raises(p.ProtocolError, match="minimums"):
        p.decode_hello(frame.payload)
    ours = p.Hello(1, 1)
    assert p.negotiate_version(ours, p.Hello(1, 3)) == 1
    with pytest.raises(p.ProtocolError, match="no common protocol version"):
        p.negotiate_version(ours, p.Hello(2, 3))


def test_window_increment_bounds() -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_window(struct.pack("!I", 0))
    with pytest.raises(p.ProtocolError):
        p.decode_window(struct.pack("!I", 2**31))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("Bad@Name", "x", "invalid header name 'Bad@Name'"),
        ("Spaced Name", "x", "invalid header name 'Spaced Name'"),
        ("Ünicode", "x", "invalid header name 'Ünicode'"),
        ("", "x", "invalid header name ''"),
        ("X-Split", "one\ntwo", "invalid characters in header 'X-Split'"),
        ("X-Cr", "a\rb", "invalid characters in header 'X-Cr'"),
        ("X-Nul", "a\x00b", "invalid characters in header 'X-Nul'"),
    ],
)
def test_the_encoder_refuses_what_the_decoder_would_reject(name: str, value: str, message: str) -> None:
    # Refused at the sender, the header costs one stream; at the receiver, the whole connection.
    heads = [("Accept", "*/*"), (name, value)]
    with pytest.raises(p.ProtocolError) as exc:
        p.encode_response_head(1, p.ResponseHead(200, tuple(heads)))
    assert exc.value.message == message
    with pytest.raises(p.ProtocolError):
        p.encode_request_head(1, p.RequestHead("GET", "t", "/", tuple(heads)))


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GE T", "/", "invalid method 'GE T'"),
        ("GET", "no-slash", "invalid request path 'no-slash'"),
        ("GET", "/a b", "invalid request path '/a b'"),
        ("GET", "/a\r\nX: y", "invalid request path '/a\\r\\nX: y'"),
    ],
)
def test_the_encoder_refuses_bad_request_lines(method: str, path: str, message: str) -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.encode_request_head(1, p.RequestHead(method, "t", path))
    assert exc.value.message == message
