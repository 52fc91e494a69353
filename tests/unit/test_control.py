"""CONTROL frames (protocol §13): the codec, the capability gate, and request/reply over two muxes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore import protocol as p
from gwcore.control import ControlChannel, ControlError, Message
from gwcore.streams import Mux

pytestmark = pytest.mark.unit


# --- codec ----------------------------------------------------------------------------------------


def test_control_round_trips_as_one_connection_frame() -> None:
    frame = p.encode_control({"type": "health", "v": 1, "name": "gw-ü"})
    (decoded,) = p.Decoder().feed(frame)
    assert decoded.type is p.FrameType.CONTROL and decoded.stream_id == 0
    assert p.decode_control(decoded.payload) == {"type": "health", "v": 1, "name": "gw-ü"}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"[1]", "not a JSON object"),
        (b'{"type": "a", "type": "b"}', "duplicate key"),
        (b'{"v": 1}', "type 'None'"),
        (b'{"type": "Health"}', "not a lower-case name"),
        (b'{"type": "a\\nb"}', "not a lower-case name"),
        (b'{"type": 7}', "not a lower-case name"),
        (b"\xff", "not JSON"),
        (b"[" * 5000 + b"]" * 5000, "not JSON"),
    ],
)
def test_malformed_control_payloads_are_protocol_errors(payload: bytes, problem: str) -> None:
    with pytest.raises(p.ProtocolError, match=problem):
        p.decode_control(payload)


def test_the_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(p.ProtocolError, match="lower-case"):
        p.encode_control({"type": "Bad Type"})
    with pytest.raises(p.ProtocolError, match="not JSON"):
        p.encode_control({"type": "x", "n": float("nan")})


def test_a_control_frame_on_a_stream_or_over_the_head_limit_is_refused_from_its_header() -> None:
    frame = bytearray(p.encode_control({"type": "x"}))
    frame[2:6] = (3).to_bytes(4, "big")  # stream id 3
    with pytest.raises(p.ProtocolError, match="CONTROL frame on stream 3"):
        p.Decoder().feed(bytes(frame))
    big = p.encode_control({"type": "x", "pad": "a" * 70_000})
    with pytest.raises(p.ProtocolError, match="exceeds the limit"):
        p.Decoder(max_header_block=64 * 1024).feed(big[: p.HEADER_SIZE])


@given(st.binary(max_size=300))
def test_decode_control_raises_only_protocol_errors(payload: bytes) -> None:
    try:
        message = p.decode_control(payload)
    except p.ProtocolError:
        return
    assert isinstance(message["type"], str)


# --- two muxes back to back --------------------------------------------------------------------


class Ends:
    """A plane-side and a gateway-side Mux wired in memory, each with its own ControlChannel."""

    def __init__(self, plane_caps: tuple[str, ...], gateway_caps: tuple[str, ...]) -> None:
        self.plane_control = ControlChannel("plane")
        self.gateway_control = ControlChannel("gateway")

        async def to_gateway(data: bytes) -> None:
            self.gateway.feed(data)

        async def to_plane(data: bytes) -> None:
            self.plane.feed(data)

        self.plane = Mux(
            to_gateway,
            p.Limits(),
            opens_streams=True,
            name="plane",
            capabilities=plane_caps,
            on_control=self.plane_control.on_message,
        )
        self.gateway = Mux(
            to_plane,
            p.Limits(),
            opens_streams=False,
            name="gw",
            capabilities=gateway_caps,
            on_control=self.gateway_control.on_message,
        )

    async def __aenter__(self) -> Ends:
        self.plane.start()
        self.gateway.start()
        await asyncio.wait_for(asyncio.gather(self.plane.ready.wait(), self.gateway.ready.wait()), 2)
        self.plane_control.attach(self.plane)
        self.gateway_control.attach(self.gateway)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.plane_control.close()
        await self.gateway_control.close()
        await self.plane.stop()
        await self.gateway.stop()


BOTH = (p.CAP_CONTROL,)


async def test_a_request_gets_its_handlers_reply() -> None:
    async with Ends(BOTH, BOTH) as ends:
        seen: list[Message] = []

        async def renew(message: Message) -> Message:
            seen.append(message)
            return {"type": "renewed", "certificate": "PEM"}

        ends.plane_control.register("renew", renew)
        reply = await ends.gateway_control.request({"type": "renew", "csr": "CSR"}, timeout=2)
        assert reply["type"] == "renewed" and reply["certificate"] == "PEM" and reply["re"] == seen[0]["id"]
        assert seen[0]["csr"] == "CSR"


async def test_error_replies_unknown_types_and_handler_bugs_become_control_errors() -> None:
    async with Ends(BOTH, BOTH) as ends:

        async def refuse(message: Message) -> Message:
            raise ControlError("revoked", "this gateway was revoked")

        async def bug(message: Message) -> Message:
            raise KeyError("oops")

        ends.plane_control.register("renew", refuse)
        ends.plane_control.register("buggy", bug)
        with pytest.raises(ControlError) as info:
            await ends.gateway_control.request({"type": "renew"}, timeout=2)
        assert (info.value.code, info.value.detail) == ("revoked", "this gateway was revoked")
        with pytest.raises(ControlError, match="unknown-type"):
            await ends.gateway_control.request({"type": "nobody-serves-this"}, timeout=2)
        with pytest.raises(ControlError) as info:
            await ends.gateway_control.request({"type": "buggy"}, timeout=2)
        assert info.value.code == "internal" and "oops" not in str(info.value)
        # The tunnel survived all of it.
        assert not ends.plane.closed and not ends.gateway.closed


async def test_one_way_messages_reach_their_handler_and_unknown_ones_are_ignored() -> None:
    async with Ends(BOTH, BOTH) as ends:
        got = asyncio.Queue[Message]()

        async def health(message: Message) -> None:
            await got.put(message)

        ends.plane_control.register("health", health)
        assert ends.gateway_control.send({"type": "from-a-newer-gateway"})
        assert ends.gateway_control.send({"type": "health", "uptime": 5})
        message = await asyncio.wait_for(got.get(), 2)
        assert message == {"type": "health", "uptime": 5}


async def test_without_the_peers_capability_nothing_is_sent_and_requests_fail_at_once() -> None:
    async with Ends((), BOTH) as ends:
        assert not ends.gateway_control.ready
        assert ends.gateway_control.send({"type": "health"}) is False
        with pytest.raises(ControlError, match="unavailable"):
            await ends.gateway_control.request({"type": "renew"}, timeout=2)
        with pytest.raises(p.ProtocolError, match="does not take CONTROL"):
            ends.gateway.send_control({"type": "health"})


async def test_a_control_frame_to_a_side_that_never_announced_it_ends_the_connection() -> None:
    async with Ends((), BOTH) as ends:
        ends.plane.feed(p.encode_control({"type": "health"}))
        assert ends.plane.closed and ends.plane.close_reason is not None
        assert "did not announce" in ends.plane.close_reason[1]


async def test_a_malformed_message_costs_only_itself() -> None:
    async with Ends(BOTH, BOTH) as ends:
        ends.plane.feed(p.encode_frame(p.FrameType.CONTROL, 0, b'{"type": "x", "type": "y"}'))
        assert not ends.plane.closed

        async def echo(message: Message) -> Message:
            return {"type": "echo"}

        ends.plane_control.register("echo", echo)
        assert (await ends.gateway_control.request({"type": "echo"}, timeout=2))["type"] == "echo"


async def test_waiting_requests_fail_when_the_connection_ends() -> None:
    async with Ends(BOTH, BOTH) as ends:
        started = asyncio.Event()

        async def slow(message: Message) -> Message:
            started.set()
            await asyncio.sleep(30)
            return {"type": "late"}

        ends.plane_control.register("slow", slow)
        waiting = asyncio.create_task(ends.gateway_control.request({"type": "slow"}, timeout=10))
        await asyncio.wait_for(started.wait(), 2)
        ends.gateway_control.detach(ends.gateway)
        with pytest.raises(ControlError, match="disconnected"):
            await waiting


async def test_timeouts_and_the_bound_on_handlers_running_at_once() -> None:
    async with Ends(BOTH, BOTH) as ends:
        release = asyncio.Event()

        async def held(message: Message) -> Message:
            await release.wait()
            return {"type": "done"}

        ends.plane_control.register("held", held)
        with pytest.raises(ControlError, match="timeout"):
            await ends.gateway_control.request({"type": "held"}, timeout=0.2)
        first = [
            asyncio.create_task(ends.gateway_control.request({"type": "held"}, timeout=5))
            for _ in range(ends.plane_control.max_inflight - 1)
        ]
        await asyncio.sleep(0.1)
        with pytest.raises(ControlError, match="busy"):
            await ends.gateway_control.request({"type": "held"}, timeout=2)
        release.set()
        assert all(r["type"] == "done" for r in await asyncio.gather(*first))


async def test_requests_with_an_invalid_id_are_dropped() -> None:
    async with Ends(BOTH, BOTH) as ends:
        calls: list[Message] = []

        async def record(message: Message) -> Message:
            calls.append(message)
            return {"type": "ok"}

        ends.plane_control.register("rec", record)
        for bad in ("7", 2**60, True, -1, "x" * 1000):
            ends.plane.feed(p.encode_control({"type": "rec", "id": bad}))
        await asyncio.sleep(0.05)
        assert calls == []
