"""Fuzzing the request path with hypothesis: framing headers and OPEN/DATA boundaries as inputs.

Each example opens a few streams on the gateway's real Mux and Relay (in memory, plane side
driven by hand) to a raw loopback target that records every byte. Properties:

- the target never receives a byte beyond a declared request: a request arrives exactly when
  its framing is valid and matches its body (an independent oracle says which), with exactly the
  plane's body; anything else at the target is the incomplete start of a refused request, on a
  connection the gateway closed;
- the gateway never raises out of the handler (no `internal` RESET, no task dies with an error);
- the connection pool never holds a connection that saw an error.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.filter.policy import load_policies
from gateway.relay.relay import Relay
from gateway.relay.targets import parse_targets
from gwcore import protocol as p
from tests.integration.relay_harness import HostilePlane, RecordingTarget
from tests.integration.tunnel_support import write_policies

SMUGGLED = b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n"
BAD_LENGTHS = ["1_0", "+7", " 7", "7 ", "0x7", "7, 7", "-1", "", "\u0667", "9" * 19, "07"]
TE_VALUES = ["chunked", "gzip", "chunked, chunked", "identity"]
OTHER = [
    ("Connection", "close, Content-Length"),
    ("Expect", "100-continue"),
    ("Host", "evil"),
    ("Trailer", "X"),
]


@st.composite
def stream_inputs(draw: st.DrawFn) -> tuple[str, tuple[tuple[str, str], ...], bytes | None, int, list[int]]:
    body = draw(st.one_of(st.none(), st.binary(max_size=48)))
    if body is not None and draw(st.booleans()):
        body += SMUGGLED
    headers: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["cl-good", "cl-near", "cl-bad", "te", "other"]))
        size = len(body or b"")
        if kind == "cl-good":
            headers.append(("Content-Length", str(size)))
        elif kind == "cl-near":
            headers.append(("content-length", str(max(0, size + draw(st.integers(-6, 6))))))
        elif kind == "cl-bad":
            headers.append(("Content-Length", draw(st.sampled_from(BAD_LENGTHS))))
        elif kind == "te":
            headers.append(("Transfer-Encoding", draw(st.sampled_from(TE_VALUES))))
        else:
            headers.append(draw(st.sampled_from(OTHER)))
    method = draw(st.sampled_from(["GET", "POST", "PUT"]))
    pieces = draw(st.integers(1, 4))
    cuts = draw(st.lists(st.integers(1, 400), max_size=4))
    return method, tuple(headers), body, pieces, cuts


def framing_ok(headers: tuple[tuple[str, str], ...], body: bytes | None) -> bool:
    """The oracle: whether a request with these headers and body may reach the target."""
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    coded = any(k.lower() == "transfer-encoding" for k, _ in headers)
    if not lengths:
        return True
    if len(lengths) > 1 or coded or re.fullmatch(r"[0-9]{1,18}", lengths[0]) is None:
        return False
    return int(lengths[0]) == len(body or b"") and (body is not None or int(lengths[0]) == 0)


def frames(
    sid: int, method: str, headers: tuple[tuple[str, str], ...], body: bytes | None, pieces: int
) -> bytes:
    head = p.RequestHead(method, "t", f"/p/s{sid}", headers)
    if body is None:
        return p.encode_request_head(sid, head, fin=True)
    step = max(1, -(-len(body) // pieces))
    chunks = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    data = [p.encode_data(sid, c, fin=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    return p.encode_request_head(sid, head) + b"".join(data)


POLICY_DIR = Path(tempfile.mkdtemp(prefix="relay-fuzz-"))
POLICIES = load_policies([write_policies(POLICY_DIR)])


async def one_example(
    streams: list[tuple[str, tuple[tuple[str, str], ...], bytes | None, int, list[int]]],
) -> None:
    async with RecordingTarget().running() as target:
        items = [{"name": "t", "url": target.url, "allow_private": ["127.0.0.1"]}]
        relay = Relay(parse_targets({"targets": items}, "t"), POLICIES)
        try:
            async with HostilePlane(relay) as plane:
                for sid, (method, headers, body, pieces, cuts) in enumerate(streams, start=1):
                    await plane.feed_paced(frames(sid, method, headers, body, pieces), cuts)
                outs = [await plane.outcome(sid) for sid in range(1, len(streams) + 1)]
                for _ in range(100):
                    if not relay._tasks:
                        break
                    await asyncio.sleep(0.01)
                assert not relay._tasks
                pooled = [c for _t, pool in relay._pools.values() for c in pool.idle]
                assert all(not c.failed and c.usable for c in pooled)  # never a connection that saw an error
        finally:
            await relay.close()
    assert target.errors == []
    arrived = {int(r.path.rsplit("s", 1)[1]): r for r in target.requests}
    for sid, ((_m, headers, body, _pc, _c), out) in enumerate(zip(streams, outs, strict=True), start=1):
        assert out.reset is not p.ErrorCode.INTERNAL, out
        if framing_ok(headers, body):
            assert out.status == 200 and out.body == (body or b""), (headers, body, out)
            assert arrived[sid].body == (body or b"")
        else:
            assert out.reset is p.ErrorCode.BAD_REQUEST, (headers, body, out)
            assert sid not in arrived
    assert all(target.leftover_closed_by_peer)  # the gateway dropped every connection it broke off
    for leftover in target.leftovers:  # incomplete starts of refused requests, nothing more
        head, _sep, partial = leftover.partition(b"\r\n\r\n")
        sid = int(head.split(b" ")[1].rsplit(b"s", 1)[1])
        _m, headers, body, _pc, _c = streams[sid - 1]
        assert not framing_ok(headers, body) and body is not None
        assert body.startswith(partial) and len(partial) < len(body) + 1
        declared = int(next(v for k, v in headers if k.lower() == "content-length"))
        assert len(partial) < declared or partial == b""


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams=st.lists(stream_inputs(), min_size=1, max_size=4))
def test_fuzz_request_framing(
    streams: list[tuple[str, tuple[tuple[str, str], ...], bytes | None, int, list[int]]],
) -> None:
    # A private loop per example, closed here, leaves pytest-asyncio's loop untouched.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(one_example(streams), 30))
    finally:
        loop.close()
