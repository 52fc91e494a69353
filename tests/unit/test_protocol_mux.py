"""The stream multiplexer, two ends wired back to back in memory (no sockets): credit, resets, GOAWAY."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore import protocol as p
from gwcore import streams
from gwcore.streams import Mux, Stream, StreamReset


class Pair:
    """A plane-side and a gateway-side Mux whose writes are delivered to each other."""

    def __init__(self, limits: p.Limits, on_open) -> None:
        self.delivered = 0
        self.paused = False

        async def to_gateway(data: bytes) -> None:
            while self.paused:
                await asyncio.sleep(0.01)
            self.delivered += len(data)
            self.gateway.feed(data)

        async def to_plane(data: bytes) -> None:
            while self.paused:
                await asyncio.sleep(0.01)
            self.plane.feed(data)

        self.plane = Mux(to_gateway, limits, opens_streams=True, name="plane")
        self.gateway = Mux(to_plane, limits, opens_streams=False, on_open=on_open, name="gw")

    async def __aenter__(self) -> Pair:
        self.plane.start()
        self.gateway.start()
        await asyncio.wait_for(asyncio.gather(self.plane.ready.wait(), self.gateway.ready.wait()), 2)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.plane.stop()
        await self.gateway.stop()


SMALL = p.Limits(
    max_frame_size=4096, initial_stream_window=16384, initial_connection_window=65536, heartbeat_ms=200
)


def serve(body_for):
    tasks = set()

    async def handle(stream: Stream) -> None:
        try:
            req = b""
            while chunk := await stream.read():
                req += chunk
            stream.send_head(p.ResponseHead(200, (("x-path", stream.request.path),)))
            await stream.write(body_for(stream.request.path, req), fin=True)
        except StreamReset:
            pass

    def on_open(stream: Stream) -> None:
        t = asyncio.create_task(handle(stream))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    return on_open


async def read_all(stream: Stream) -> bytes:
    out = b""
    while chunk := await stream.read():
        out += chunk
    return out


async def test_request_and_response_bodies_larger_than_every_window() -> None:
    async with Pair(SMALL, serve(lambda path, req: req[::-1] * 3)) as pair:
        body = bytes(range(256)) * 1000  # 256 KB, 4x the connection window
        st = pair.plane.open(p.RequestHead("POST", "t", "/echo"))
        await st.write(body, fin=True)
        head = await st.response()
        assert head.status == 200 and dict(head.headers)["x-path"] == "/echo"
        assert await read_all(st) == body[::-1] * 3
        await asyncio.sleep(0.05)
        assert pair.plane.streams == {} and pair.gateway.streams == {}
        # Credit comes back in quarter-window batches: at most one batch is still outstanding.
        assert pair.plane.send_credit > SMALL.initial_connection_window * 3 // 4 - 1
        assert (
            pair.gateway.send_credit >= SMALL.initial_connection_window - SMALL.initial_connection_window // 4
        )


async def test_read_complete_hands_over_a_finished_body_and_nothing_else() -> None:
    async with Pair(SMALL, serve(lambda path, req: b"x" * int(path[1:]))) as pair:
        small = pair.plane.open(p.RequestHead("GET", "t", "/1000"), fin=True)
        await small.response()
        await asyncio.sleep(0.05)  # head, DATA and FIN have all arrived
        assert small.read_complete() == b"x" * 1000
        assert await small.read() == b""
        # A body larger than the stream window cannot have ended yet: nothing is handed over.
        big = pair.plane.open(p.RequestHead("GET", "t", "/100000"), fin=True)
        await big.response()
        await asyncio.sleep(0.05)
        assert big.read_complete() is None
        assert len(await read_all(big)) == 100_000
        await asyncio.sleep(0.05)
        # Both returned their credit: the connection window is whole again (within one batch).
        assert pair.gateway.send_credit > SMALL.initial_connection_window * 3 // 4 - 1


async def test_a_slow_link_holds_writers_back_instead_of_queueing_the_whole_window() -> None:
    # Credit for 64 MiB, but the link is stalled: the sender queues a couple of batches, not 64 MiB.
    wide = p.Limits(initial_stream_window=64 << 20, initial_connection_window=64 << 20, heartbeat_ms=60_000)
    body = b"b" * (16 << 20)
    async with Pair(wide, serve(lambda path, req: body)) as pair:
        st = pair.plane.open(p.RequestHead("GET", "t", "/big"), fin=True)
        while not pair.gateway.streams:  # the request is through; now the link stalls
            await asyncio.sleep(0)
        pair.paused = True
        await asyncio.sleep(0.3)
        queued = pair.gateway._out_size
        assert 0 < queued <= streams.OUT_HIGH + wide.max_frame_size + p.HEADER_SIZE, queued
        pair.paused = False
        await st.response()
        assert len(await asyncio.wait_for(read_all(st), 10)) == len(body)


async def test_stalled_reader_does_not_stall_other_streams() -> None:
    async with Pair(SMALL, serve(lambda path, req: b"z" * 200_000)) as pair:
        stalled = pair.plane.open(p.RequestHead("GET", "t", "/stalled"), fin=True)
        await stalled.response()
        # Never read `stalled`; 10 other streams must complete meanwhile.
        others = [pair.plane.open(p.RequestHead("GET", "t", f"/o{i}"), fin=True) for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*(read_all(s) for s in others)), 5)
        assert all(len(r) == 200_000 for r in results)
        # The stalled stream holds at most its own window.
        assert sum(len(c) for c in stalled._inbox) <= SMALL.initial_stream_window
        assert len(await read_all(stalled)) == 200_000


async def test_reset_reaches_the_other_side_with_its_code() -> None:
    opened: list[Stream] = []
    async with Pair(SMALL, opened.append) as pair:
        st = pair.plane.open(p.RequestHead("GET", "t", "/"), fin=True)
        await asyncio.sleep(0.05)
        opened[0].reset(p.ErrorCode.TARGET_REFUSED, "connection refused")
        with pytest.raises(StreamReset) as info:
            await st.response()
        assert info.value.code is p.ErrorCode.TARGET_REFUSED and info.value.detail == "connection refused"


async def test_stream_limit_gives_too_many_streams() -> None:
    limits = p.Limits(max_streams=2, heartbeat_ms=200)
    async with Pair(limits, lambda s: None) as pair:
        pair.plane.open(p.RequestHead("GET", "t", "/1"), fin=True)
        pair.plane.open(p.RequestHead("GET", "t", "/2"), fin=True)
        with pytest.raises(StreamReset) as info:
            pair.plane.open(p.RequestHead("GET", "t", "/3"), fin=True)
        assert info.value.code is p.ErrorCode.TOO_MANY_STREAMS


async def test_goaway_refuses_new_streams_and_lets_old_ones_finish() -> None:
    async with Pair(SMALL, serve(lambda path, req: b"done")) as pair:
        st = pair.plane.open(p.RequestHead("GET", "t", "/a"), fin=True)
        await st.response()  # the gateway has seen stream 1 before it says GOAWAY
        pair.gateway.goaway(p.ErrorCode.NO_ERROR, "restart")
        assert await read_all(st) == b"done"
        await asyncio.sleep(0.05)
        assert pair.plane.goaway_received is not None
        with pytest.raises(StreamReset) as info:
            pair.plane.open(p.RequestHead("GET", "t", "/b"), fin=True)
        assert info.value.code is p.ErrorCode.GOING_AWAY
        assert await pair.gateway.drain(1)


async def test_goaway_refuses_streams_the_peer_never_saw() -> None:
    async with Pair(SMALL, serve(lambda path, req: b"done")) as pair:
        st = pair.plane.open(p.RequestHead("GET", "t", "/a"), fin=True)
        pair.gateway.goaway(p.ErrorCode.NO_ERROR, "restart")  # sent before the OPEN arrives
        with pytest.raises(StreamReset) as info:
            await read_all(st)
        assert info.value.code is p.ErrorCode.GOING_AWAY


async def test_protocol_violation_closes_the_connection_and_fails_streams() -> None:
    async with Pair(SMALL, lambda s: None) as pair:
        st = pair.plane.open(p.RequestHead("GET", "t", "/"), fin=True)
        pair.plane.feed(p.encode_frame(p.FrameType.PING, 0, b"short"))
        assert pair.plane.closed and pair.plane.close_reason[0] is p.ErrorCode.PROTOCOL_ERROR
        with pytest.raises(StreamReset):
            await st.response()


async def test_stream_window_overrun_resets_only_that_stream() -> None:
    async with Pair(SMALL, lambda s: None) as pair:
        st = pair.plane.open(p.RequestHead("GET", "t", "/"), fin=True)
        await asyncio.sleep(0.05)
        for _ in range(5):  # 20000 bytes > the 16384-byte stream window
            pair.plane.feed(p.encode_data(1, b"x" * 4000))
        assert not pair.plane.closed
        with pytest.raises(StreamReset) as info:
            await st.response()
        assert info.value.code is p.ErrorCode.FLOW_CONTROL


async def test_connection_window_overrun_closes_the_connection() -> None:
    async with Pair(SMALL, lambda s: None) as pair:
        for _ in range(6):
            pair.plane.open(p.RequestHead("GET", "t", "/"), fin=True)
        await asyncio.sleep(0.05)
        for sid in range(1, 7):  # 6 x 12000 = 72000 bytes > the 65536-byte connection window
            for _ in range(3):
                pair.plane.feed(p.encode_data(sid, b"x" * 4000))
        assert pair.plane.closed
        assert pair.plane.close_reason[0] is p.ErrorCode.FLOW_CONTROL


async def test_heartbeat_detects_a_silent_peer() -> None:
    async with Pair(SMALL, lambda s: None) as pair:
        pair.paused = True  # frames stop flowing both ways, like a blackholed link
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not pair.plane.closed and loop.time() - start < 3:
            await asyncio.sleep(0.02)
        elapsed = loop.time() - start
        assert pair.plane.close_reason is not None
        assert pair.plane.close_reason[0] is p.ErrorCode.HEARTBEAT_TIMEOUT
        assert elapsed <= 2 * 0.2 + 0.2
        pair.paused = False


FRAME_TYPES = st.sampled_from(list(p.FrameType))


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    """Well-framed but arbitrary frames (any type, stream, flags, payload) after a valid HELLO."""
    out = [p.encode_hello(p.Hello(limits=SMALL))]
    for _ in range(draw(st.integers(0, 8))):
        ftype = draw(FRAME_TYPES)
        sid = draw(st.integers(0, 5))
        payload = draw(st.binary(max_size=64))
        out.append(p.HEADER.pack(0x10 | ftype, draw(st.integers(0, 255)), sid, len(payload)) + payload)
    if draw(st.booleans()):
        out.append(draw(st.binary(max_size=32)))  # trailing garbage
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(data=hostile_frames())
def test_mux_never_raises_on_hostile_input(data: bytes) -> None:
    async def run() -> None:
        sent: list[bytes] = []

        async def send(b: bytes) -> None:
            sent.append(b)

        for opens in (False, True):
            mux = Mux(send, SMALL, opens_streams=opens, on_open=lambda s: None)
            if opens:
                mux.peer = SMALL
                mux.open(p.RequestHead("GET", "t", "/"), fin=True)
            mux.feed(data)  # must not raise: violations close the mux instead
            assert mux.closed or mux.close_reason is None

    # A private loop, closed here, leaves the policy's loop (pytest-asyncio's) untouched.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


async def test_has_body_and_rx_fin_are_different_facts() -> None:
    opened: list[Stream] = []
    async with Pair(SMALL, opened.append) as pair:
        # OPEN without FIN and DATA+FIN in one message: the peer has finished AND there is a body.
        pair.gateway.feed(
            p.encode_request_head(1, p.RequestHead("POST", "t", "/a")) + p.encode_data(1, b"body", fin=True)
        )
        pair.gateway.feed(p.encode_request_head(2, p.RequestHead("GET", "t", "/b"), fin=True))
        with_body, without = opened
        assert with_body.rx_fin and with_body.has_body
        assert await with_body.read() == b"body" and await with_body.read() == b""
        assert without.rx_fin and not without.has_body
        assert await without.read() == b""


async def test_a_ping_flood_leaves_one_pong_pending_and_the_link_alive() -> None:
    sent: list[bytes] = []
    async with Pair(SMALL, serve(lambda path, req: b"pong-ok")) as pair:
        pair.paused = True  # the gateway cannot write while the flood arrives
        await asyncio.sleep(0.05)
        flood = b"".join(p.encode_ping(i) for i in range(1, 100_001))
        for start in range(0, len(flood), 180_000):  # in messages of 10,000 PINGs
            pair.gateway.feed(flood[start : start + 180_000])
        queued = pair.gateway._out_size
        assert queued <= 4 * (p.HEADER_SIZE + 8), queued  # not 100,000 PONGs (1.8 MB)
        assert not pair.gateway.closed
        # The answer that goes out echoes the newest PING.
        original = pair.plane.feed

        def spy(data: bytes) -> None:
            sent.append(data)
            original(data)

        pair.plane.feed = spy  # type: ignore[method-assign]
        pair.paused = False
        st = pair.plane.open(p.RequestHead("GET", "t", "/after"), fin=True)
        assert await asyncio.wait_for(read_all(st), 5) == b"pong-ok"
    frames = p.Decoder(1 << 20, 1 << 20).feed(b"".join(sent))
    pongs = [p.decode_ping(f.payload) for f in frames if f.type is p.FrameType.PONG]
    assert pongs and pongs[0] == 100_000 and len(pongs) <= 2
