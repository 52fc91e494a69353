"""A hostile plane against the gateway's real tunnel client and relay, over mTLS on loopback.

The plane here speaks the real wire (a TLS WebSocket the real TunnelClient dials, with its client
certificate) but sends whatever a compromised plane would: Content-Length shorter and longer
than the body, Content-Length with Transfer-Encoding, raw chunked bodies with extensions and
trailers, a second request line inside a body, and one valid request cut into two WebSocket
messages at every byte offset. The targets (plain HTTP and TLS) are raw TCP servers that record
every byte they receive.

Asserted: no byte outside a declared request reaches a target (every byte a target got parses
as requests the plane declared, or as the incomplete start of one that was refused), and every
response that reaches the plane either carries the X-Gateway-Filter header of a rule that
allowed it or is a RESET.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from yarl import URL

from gateway.filter.policy import load_policies
from gateway.relay.relay import Relay
from gateway.relay.targets import parse_targets
from gwcore import protocol as p
from tests.integration.relay_harness import HostileHub, Outcome, RecordingTarget, TargetRequest, ok_response
from tests.integration.tunnel_support import free_port, make_client, make_pki, plane_ssl_context

pytestmark = pytest.mark.integration

POLICY = """\
kind: http
rules:
  - name: no-secrets
    deny: true
    methods: ["*"]
    path: /secret
    reason: secrets stay home
  - name: filtered
    path: /f/*
    json: ["[].id"]
  - name: passthrough
    path: /p/**
    methods: [GET, POST, PUT]
    allow_write: true
    passthrough: true
"""
ALLOWING_RULES = {"filtered", "passthrough"}
SMUGGLED = b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED_RAW = b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: evil\r\n\r\n" + SMUGGLED


def respond(req: TargetRequest) -> bytes:
    if req.path.startswith("/f/"):
        return ok_response(b'[{"id":1,"secret":"CANARY"}]', "application/json")
    if req.path == "/secret":
        return ok_response(b"CANARY-SECRET")
    return ok_response(req.body)


@dataclass
class Expect:
    """One stream the hostile plane opens, and what must come of it."""

    sid: int
    target: str
    path: str
    body: bytes | None  # what the target must receive as the body (None: the request must not arrive)
    reset: p.ErrorCode | None = None


@dataclass
class Run:
    hub: HostileHub
    targets: dict[str, RecordingTarget]
    expected: list[Expect] = field(default_factory=list)
    next_sid: int = 1

    async def send(
        self,
        target: str,
        path: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes | None,
        *,
        pieces: int = 1,
        splits: tuple[int, ...] = (),
        arrives: bytes | None = None,
        reset: p.ErrorCode | None = None,
    ) -> None:
        sid = self.next_sid
        self.next_sid += 1
        method = "GET" if body is None else "POST"
        head = p.RequestHead(method, target, path, headers)
        frames = [p.encode_request_head(sid, head, fin=body is None)]
        if body is not None:
            step = max(1, -(-len(body) // pieces))
            chunks = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
            frames += [p.encode_data(sid, c, fin=i == len(chunks) - 1) for i, c in enumerate(chunks)]
        await self.hub.send(b"".join(frames), splits)
        self.expected.append(Expect(sid, target, path, arrives, reset))


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Run]:
    pki = make_pki(tmp_path)
    ca = trustme.CA()
    target_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(target_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "target-ca.pem"))
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "t.yaml").write_text(POLICY)
    hub = HostileHub()
    runner = web.AppRunner(hub.app(), shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=plane_ssl_context(pki.plane_dir)).start()
    async with (
        RecordingTarget(respond).running() as plain,
        RecordingTarget(respond, ssl_context=target_ctx).running() as tls,
    ):
        items = [
            {"name": "plain", "url": plain.url, "allow_private": ["127.0.0.1"]},
            {
                "name": "tls",
                "url": tls.url,
                "allow_private": ["127.0.0.1"],
                "tls": {"ca_file": str(tmp_path / "target-ca.pem")},
            },
        ]
        relay = Relay(parse_targets({"targets": items}, "t"), load_policies([tmp_path / "pol"]))
        client = make_client(pki, URL(f"https://127.0.0.1:{port}"), relay, heartbeat_ms=2000)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.connected.wait(), 10)
            await asyncio.wait_for(hub.connected.wait(), 5)
            yield Run(hub, {"plain": plain, "tls": tls})
        finally:
            await client.stop(1)
            await task
            await relay.close()
            await runner.cleanup()


def cl(n: int) -> tuple[str, str]:
    return ("Content-Length", str(n))


async def test_a_hostile_plane_gets_nothing_past_the_declared_request(run: Run) -> None:
    bad = p.ErrorCode.BAD_REQUEST
    valid = b"hello world"
    for name in ("plain", "tls"):
        # Declared shorter than the body, with a second request line in the excess, in 1 or 2 frames.
        for pieces in (1, 2):
            await run.send(name, "/p/short", (cl(5),), b"hello" + SMUGGLED, pieces=pieces, reset=bad)
        await run.send(name, "/p/long", (cl(100),), b"hello", reset=bad)
        await run.send(
            name, "/p/te-cl", (cl(len(CHUNKED_RAW)), ("Transfer-Encoding", "chunked")), CHUNKED_RAW, reset=bad
        )
        await run.send(name, "/p/te-cl-2", (("Transfer-Encoding", "chunked"), cl(5)), b"hello", reset=bad)
        # A raw chunked body with an extension, a trailer and a request after it: the gateway
        # drops the plane's Transfer-Encoding and frames these bytes as the body, all of them.
        await run.send(
            name, "/p/chunked", (("Transfer-Encoding", "chunked"),), CHUNKED_RAW, arrives=CHUNKED_RAW
        )
        # A second request line inside a correctly declared body is body, not a request.
        pipelined = b"a=1" + SMUGGLED
        await run.send(name, "/p/pipelined", (cl(len(pipelined)),), pipelined, arrives=pipelined)
        await run.send(name, "/secret", (), None, reset=p.ErrorCode.FILTERED)
        await run.send(name, "/f/doc", (), None, arrives=b"")
        # One valid request (OPEN, DATA, DATA+FIN) cut into two messages at every offset.
        sample = p.encode_request_head(1, p.RequestHead("POST", name, "/p/split", (cl(len(valid)),)))
        total = len(sample) + 2 * p.HEADER_SIZE + len(valid)
        for cut in range(1, total):
            await run.send(name, "/p/split", (cl(len(valid)),), valid, pieces=2, splits=(cut,), arrives=valid)
    outcomes = {e.sid: await run.hub.outcome(e.sid, timeout=20) for e in run.expected}
    check_responses(run, outcomes)
    check_targets(run)


def check_responses(run: Run, outcomes: dict[int, Outcome]) -> None:
    for e in run.expected:
        out = outcomes[e.sid]
        if out.reset is not None:
            assert out.status is None or e.reset is None, (e, out)  # refused before any head
            assert out.reset is e.reset, (e, out)
            continue
        assert e.reset is None, (e, out)
        rule = (out.header("X-Gateway-Filter") or "").split(";")[0]
        assert rule in ALLOWING_RULES, (e, out)  # never an unfiltered response
        assert b"CANARY" not in out.body, (e, out)
        if e.path.startswith("/p/"):
            assert out.body == e.body, (e, out)  # the echo of exactly what the target got


def declared_length(head: bytes) -> int:
    fields = (line.partition(b": ") for line in head.split(b"\r\n")[1:])
    return int(next(v for k, _sep, v in fields if k.lower() == b"content-length"))


def check_targets(run: Run) -> None:
    for name, target in run.targets.items():
        assert target.errors == [], target.errors  # every byte parsed as well-framed requests
        arrived = [(r.path, r.body) for r in target.requests]
        wanted = [(e.path, e.body) for e in run.expected if e.target == name and e.body is not None]
        assert sorted(arrived) == sorted(wanted)
        assert all(r.path != "/secret" for r in target.requests)
        # What else reached the target is the incomplete start of a refused request: a head with
        # nothing of the smuggled bytes, never a byte past its declared length.
        assert all(target.leftover_closed_by_peer)  # the gateway dropped every connection it broke off
        for leftover in target.leftovers:
            assert b"/secret" not in leftover, leftover
            head, sep, partial = leftover.partition(b"\r\n\r\n")
            assert sep and head.startswith(b"POST /p/"), leftover
            declared = int(
                next(
                    v
                    for k, _, v in (ln.partition(b": ") for ln in head.split(b"\r\n"))
                    if k.lower() == b"content-length"
                )
            )
            assert len(partial) < declared, leftover
        # Nothing was smuggled: the only "/secret" bytes at a target are inside declared bodies.
        inside = sum(r.body.count(b"/secret") for r in target.requests)
        assert target.received.count(b"/secret") == inside
