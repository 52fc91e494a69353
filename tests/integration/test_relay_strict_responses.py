"""Target responses are parsed strictly: any framing a second parser could read differently is a
RESET target-error, and the connection it came on is dropped, never reused.

The lean client once split heads on CRLF and read lengths with int(): `1_0` and `+7` were
lengths, the last of two Content-Length headers won, and bytes after a response waited on the
pooled connection to be read as the answer to the next request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.filter.policy import load_policies
from gateway.relay.relay import Relay
from gateway.relay.targets import parse_targets
from gwcore import protocol as p
from tests.integration.relay_harness import HostilePlane, RecordingTarget, TargetRequest, request_frames

pytestmark = pytest.mark.integration

POLICY = """\
kind: http
rules:
  - name: filtered
    path: /f/**
    json: [id]
  - name: passthrough
    path: /p/**
    passthrough: true
"""

OK = b'{"id":1}'
H = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"

BAD = {
    "dup-cl-same": H + b"Content-Length: 8\r\nContent-Length: 8\r\n\r\n" + OK,
    "dup-cl-conflict": H + b"Content-Length: 8\r\nContent-Length: 9\r\n\r\n" + OK + b" ",
    "cl-list": H + b"Content-Length: 8, 8\r\n\r\n" + OK,
    "cl-plus": H + b"Content-Length: +8\r\n\r\n" + OK,
    "cl-underscore": H + b"Content-Length: 0_8\r\n\r\n" + OK,
    "cl-hex": H + b"Content-Length: 0x8\r\n\r\n" + OK,
    "cl-and-te": H + b"Content-Length: 8\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n" + OK + b"\r\n0\r\n\r\n",
    "te-gzip": H + b"Transfer-Encoding: gzip, chunked\r\n\r\n8\r\n" + OK + b"\r\n0\r\n\r\n",
    "te-twice": H
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n"
    + OK
    + b"\r\n0\r\n\r\n",
    "obs-fold": H + b"X-Folded: a\r\n b\r\nContent-Length: 8\r\n\r\n" + OK,
    "bare-lf-header": H + b"X-A: a\nContent-Length: 8\r\n\r\n" + OK,
    "bare-lf-end": b"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 8\n\n" + OK,
    "lone-cr": H + b"X-A: a\rb\r\nContent-Length: 8\r\n\r\n" + OK,
    "space-before-colon": H + b"Content-Length : 8\r\n\r\n" + OK,
    "http2-version": b"HTTP/2.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n" + OK,
    "http09-status": b"HTTP/1.1 20 OK\r\nContent-Length: 8\r\n\r\n" + OK,
    "chunk-hex-prefix": H + b"Transfer-Encoding: chunked\r\n\r\n0x8\r\n" + OK + b"\r\n0\r\n\r\n",
    "chunk-negative": H + b"Transfer-Encoding: chunked\r\n\r\n-8\r\n" + OK + b"\r\n0\r\n\r\n",
    "chunk-plus": H + b"Transfer-Encoding: chunked\r\n\r\n+8\r\n" + OK + b"\r\n0\r\n\r\n",
    "chunk-leading-space": H + b"Transfer-Encoding: chunked\r\n\r\n 8\r\n" + OK + b"\r\n0\r\n\r\n",
    "chunk-underscore": H + b"Transfer-Encoding: chunked\r\n\r\n0_8\r\n" + OK + b"\r\n0\r\n\r\n",
    "chunk-huge": H + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\n" + OK + b"\r\n0\r\n\r\n",
    "chunk-bare-lf": H + b"Transfer-Encoding: chunked\r\n\r\n8\n" + OK + b"\r\n0\r\n\r\n",
    "chunk-no-crlf": H + b"Transfer-Encoding: chunked\r\n\r\n8\r\n" + OK + b"XX0\r\n\r\n",
    "switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
}

GOOD_CHUNKED = (
    H + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\n" + OK[:3] + b"\r\n5\r\n" + OK[3:] + b"\r\n0\r\n\r\n"
)
GOOD = H + b"Content-Length: 8\r\n\r\n" + OK
SMUGGLED_RESPONSE = H + b'Content-Length: 12\r\n\r\n{"id":"bad"}'


def respond(req: TargetRequest) -> bytes:
    name = req.path.rsplit("/", 1)[-1]
    if name in BAD:
        return BAD[name]
    if name == "chunked":
        return GOOD_CHUNKED
    if name == "trailers":
        return H + b"Transfer-Encoding: chunked\r\n\r\n8\r\n" + OK + b"\r\n0\r\nX-T: 1\r\n\r\n"
    if name == "extra":
        return GOOD + SMUGGLED_RESPONSE  # an unsolicited second response rides along
    return GOOD


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Relay, RecordingTarget]]:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "t.yaml").write_text(POLICY)
    async with RecordingTarget(respond).running() as target:
        items = [{"name": "t", "url": target.url, "allow_private": ["127.0.0.1"]}]
        relay = Relay(parse_targets({"targets": items}, "test"), load_policies([tmp_path / "pol"]))
        try:
            yield relay, target
        finally:
            await relay.close()


def pooled(relay: Relay) -> int:
    return sum(len(pool.idle) for _t, pool in relay._pools.values())


@pytest.mark.parametrize("case", sorted(BAD))
async def test_a_broken_response_is_a_reset_and_its_connection_is_dropped(env, case: str) -> None:  # type: ignore[no-untyped-def]
    relay, target = env
    async with HostilePlane(relay) as plane:
        plane.feed(request_frames(1, "GET", "t", "/f/warm"))
        assert (await plane.outcome(1)).status == 200
        assert pooled(relay) == 1
        plane.feed(request_frames(3, "GET", "t", f"/f/{case}"))
        out = await plane.outcome(3)
        assert out.status is None and out.reset is p.ErrorCode.TARGET_ERROR, out
        assert pooled(relay) == 0
        plane.feed(request_frames(5, "GET", "t", "/f/after"))
        after = await plane.outcome(5)
    assert after.status == 200 and after.body == OK
    assert len(target.connections) == 2  # the broken one was closed; /f/after needed a new one


async def test_passthrough_body_broken_midway_is_reset_after_the_head(env) -> None:  # type: ignore[no-untyped-def]
    relay, _target = env
    async with HostilePlane(relay) as plane:
        plane.feed(request_frames(1, "GET", "t", "/p/chunk-no-crlf"))
        out = await plane.outcome(1)
    assert out.reset is p.ErrorCode.TARGET_ERROR and pooled(relay) == 0


async def test_good_chunked_responses_with_extensions_and_trailers(env) -> None:  # type: ignore[no-untyped-def]
    relay, target = env
    async with HostilePlane(relay) as plane:
        for sid, name in ((1, "chunked"), (3, "chunked"), (5, "trailers")):
            plane.feed(request_frames(sid, "GET", "t", f"/f/{name}"))
            out = await plane.outcome(sid)
            assert (out.status, out.body) == (200, OK), out
    assert len(target.connections) == 1  # clean chunked responses keep the connection alive...
    assert pooled(relay) == 0  # ...but not one whose trailers we did not read as carefully as the head


async def test_unsolicited_bytes_after_a_response_are_never_read_as_the_next_one(env) -> None:  # type: ignore[no-untyped-def]
    relay, target = env
    async with HostilePlane(relay) as plane:
        plane.feed(request_frames(1, "GET", "t", "/f/extra"))
        first = await plane.outcome(1)
        plane.feed(request_frames(3, "GET", "t", "/f/next"))
        second = await plane.outcome(3)
    assert (first.status, first.body) == (200, OK)
    assert (second.status, second.body) == (200, OK)  # not {"id":"bad"}
    assert len(target.connections) == 2
