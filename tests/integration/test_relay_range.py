"""Range requests: a filtered rule never forwards Range or If-Range, and fails closed on a 206 or a
Content-Range; a passthrough rule keeps them.

A 206 to a forwarded Range was once filtered as if it were the whole document: a slice of JSON
or XML that starts inside a value the filter would have removed can come out looking allowed.
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
    path: /f/*
    json: ["[].id"]
  - name: passthrough
    path: /p/*
    passthrough: true
"""

DOC = b'[{"id":1,"secret":"CANARY"}]'


def respond(req: TargetRequest) -> bytes:
    ctype = b"Content-Type: application/json\r\n"
    rng = req.header("range")
    if req.path.endswith("/always-206"):  # a slice that parses as a whole document
        return (
            b"HTTP/1.1 206 Partial Content\r\n" + ctype + b"Content-Range: bytes 100-109/500\r\n"
            b'Content-Length: 10\r\n\r\n[{"id":2}]'
        )
    if rng and rng.startswith("bytes=0-"):
        end = int(rng.split("-")[1]) if rng else 9
        part = DOC[: end + 1]
        return (
            b"HTTP/1.1 206 Partial Content\r\n" + ctype + b"Content-Range: bytes 0-%d/%d\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(part) - 1, len(DOC), len(part), part)
        )
    if req.path.endswith("/content-range"):
        return (
            b"HTTP/1.1 200 OK\r\n"
            + ctype
            + b"Content-Range: bytes 0-27/28\r\nContent-Length: 28\r\n\r\n"
            + DOC
        )
    return b"HTTP/1.1 200 OK\r\n" + ctype + b"Content-Length: %d\r\n\r\n%s" % (len(DOC), DOC)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Relay, RecordingTarget]]:
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "t.yaml").write_text(POLICY)
    async with RecordingTarget(respond).running() as target:
        items = [{"name": "t", "url": target.url, "allow_private": ["127.0.0.1"]}]
        relay = Relay(parse_targets({"targets": items}, "t"), load_policies([tmp_path / "pol"]))
        try:
            yield relay, target
        finally:
            await relay.close()


RANGE = (("Range", "bytes=0-9"), ("If-Range", '"etag"'))


async def test_filtered_rules_never_forward_range(env) -> None:  # type: ignore[no-untyped-def]
    relay, target = env
    async with HostilePlane(relay) as plane:
        plane.feed(request_frames(1, "GET", "t", "/f/doc", RANGE))
        out = await plane.outcome(1)
    assert out.status == 200 and out.body == b'[{"id":1}]', out
    (req,) = target.requests
    assert req.header("range") is None and req.header("if-range") is None


@pytest.mark.parametrize("path", ["/f/always-206", "/f/content-range"])
async def test_filtered_rules_fail_closed_on_partial_content(env, path: str) -> None:  # type: ignore[no-untyped-def]
    relay, _target = env
    async with HostilePlane(relay) as plane:
        plane.feed(request_frames(1, "GET", "t", path))
        out = await plane.outcome(1)
    assert out.status is None and out.reset is p.ErrorCode.FILTERED, out
    assert b"CANARY" not in out.body


async def test_passthrough_rules_keep_range(env) -> None:  # type: ignore[no-untyped-def]
    relay, target = env
    async with HostilePlane(relay) as plane:
        plane.feed(request_frames(1, "GET", "t", "/p/doc", RANGE))
        out = await plane.outcome(1)
    assert out.status == 206 and out.body == DOC[:10]
    assert target.requests[0].header("range") == "bytes=0-9"
