"""The gateway owns the framing of every request it sends to a target (plain HTTP and TLS alike).

A plane that declared a Content-Length shorter than its body once smuggled a second raw request
onto the pooled target connection, past deny rules and the SOAP allowlist. Now a declared length
that does not match the body, an invalid or repeated length, or Content-Length with
Transfer-Encoding is a RESET bad-request, no byte past the declared request reaches the target,
hop-by-hop and framing headers from the plane are never forwarded, and a target connection that
saw a framing error is never reused.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from gateway.filter.policy import load_policies
from gateway.relay.relay import Relay
from gateway.relay.targets import parse_targets
from gwcore import protocol as p
from tests.integration.relay_harness import HostilePlane, RecordingTarget, request_frames

pytestmark = pytest.mark.integration

POLICY = """\
kind: http
rules:
  - name: no-secrets
    deny: true
    methods: ["*"]
    path: /secret
    reason: secrets stay home
  - name: test-passthrough
    path: /**
    methods: [GET, POST, PUT]
    allow_write: true
    passthrough: true
"""

SMUGGLED = b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Env:
    relay: Relay
    targets: dict[str, RecordingTarget]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "test.yaml").write_text(POLICY)
    async with RecordingTarget().running() as plain, RecordingTarget(ssl_context=server_ctx).running() as tls:
        items = [
            {"name": "plain", "url": plain.url, "allow_private": ["127.0.0.1"]},
            {
                "name": "tls",
                "url": tls.url,
                "allow_private": ["127.0.0.1"],
                "tls": {"ca_file": str(tmp_path / "ca.pem")},
            },
        ]
        relay = Relay(parse_targets({"targets": items}, "test"), load_policies([tmp_path / "policies"]))
        try:
            yield Env(relay, {"plain": plain, "tls": tls})
        finally:
            await relay.close()


TARGETS = ["plain", "tls"]


def cl(n: int | str) -> tuple[tuple[str, str], ...]:
    return (("Content-Length", str(n)),)


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("pieces", [1, 2])
async def test_short_content_length_smuggles_nothing(env: Env, name: str, pieces: int) -> None:
    target = env.targets[name]
    async with HostilePlane(env.relay) as plane:
        # The smuggled request rides in the same DATA frame, or in a second one.
        await plane.feed_paced(
            request_frames(1, "POST", name, "/a", cl(5), b"hello" + SMUGGLED, pieces=pieces), []
        )
        out = await plane.outcome(1)
    assert out.reset is p.ErrorCode.BAD_REQUEST, out
    assert b"/secret" not in target.received
    assert [r.path for r in target.requests] == []  # not even the declared request completed


@pytest.mark.parametrize("name", TARGETS)
async def test_longer_content_length_than_the_body_is_refused(env: Env, name: str) -> None:
    target = env.targets[name]
    async with HostilePlane(env.relay) as plane:
        plane.feed(request_frames(1, "POST", name, "/a", cl(100), b"hello"))
        out = await plane.outcome(1)
    assert out.reset is p.ErrorCode.BAD_REQUEST, out
    assert target.requests == []


BAD_FRAMING = [
    cl("1_0"),
    cl("+7"),
    cl(" 7"),
    cl("7 "),
    cl("0x7"),
    cl("7, 7"),
    cl("-7"),
    cl(""),
    cl("\u0667"),  # ARABIC-INDIC DIGIT SEVEN: str.isdigit() says yes
    cl("9" * 30),
    (("Content-Length", "7"), ("Content-Length", "7")),
    (("Content-Length", "7"), ("content-length", "8")),
    (("Content-Length", "7"), ("Transfer-Encoding", "chunked")),
    (("Transfer-Encoding", "chunked"), ("Content-Length", "7")),
]


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("headers", BAD_FRAMING, ids=repr)
async def test_invalid_framing_is_refused_before_the_target(
    env: Env, name: str, headers: tuple[tuple[str, str], ...]
) -> None:
    target = env.targets[name]
    async with HostilePlane(env.relay) as plane:
        plane.feed(request_frames(1, "POST", name, "/a", headers, b"abcdefg"))
        out = await plane.outcome(1)
    assert out.reset is p.ErrorCode.BAD_REQUEST, out
    assert target.received == b""


@pytest.mark.parametrize("name", TARGETS)
async def test_a_length_without_a_body_is_refused(env: Env, name: str) -> None:
    async with HostilePlane(env.relay) as plane:
        plane.feed(request_frames(1, "POST", name, "/a", cl(5)))  # OPEN+FIN
        out = await plane.outcome(1)
    assert out.reset is p.ErrorCode.BAD_REQUEST, out
    assert env.targets[name].received == b""


HOP_HEADERS = (
    ("Connection", "keep-alive, X-Named"),
    ("X-Named", "only-for-the-next-hop"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy-Foo", "bar"),
    ("Expect", "100-continue"),
    ("Host", "evil.example"),
    ("X-Kept", "yes"),
)


@pytest.mark.parametrize("name", TARGETS)
async def test_hop_by_hop_and_framing_headers_never_reach_the_target(env: Env, name: str) -> None:
    target = env.targets[name]
    async with HostilePlane(env.relay) as plane:
        plane.feed(request_frames(1, "PUT", name, "/a", (*HOP_HEADERS, *cl(5)), b"hello"))
        plane.feed(request_frames(3, "POST", name, "/b", (("Transfer-Encoding", "chunked"),), b"world"))
        a, b = await plane.outcome(1), await plane.outcome(3)
    assert a.status == b.status == 200, (a, b)
    got = {r.path: r for r in target.requests}
    names = {k.lower() for k, _ in got["/a"].headers}
    for forbidden in ("connection", "x-named", "keep-alive", "te", "trailer", "upgrade", "expect"):
        assert forbidden not in names
    assert not any(n.startswith("proxy-") for n in names)
    assert got["/a"].header("host") == f"127.0.0.1:{target.port}"
    assert got["/a"].header("x-kept") == "yes" and got["/a"].body == b"hello"
    assert got["/a"].header("content-length") == "5"
    # Transfer-Encoding alone is dropped like any hop-by-hop field; the gateway frames the body.
    assert got["/b"].body == b"world"


@pytest.mark.parametrize("name", TARGETS)
async def test_a_connection_that_saw_a_framing_error_is_not_reused(env: Env, name: str) -> None:
    target = env.targets[name]
    async with HostilePlane(env.relay) as plane:
        plane.feed(request_frames(1, "POST", name, "/one", cl(2), b"ok"))
        assert (await plane.outcome(1)).status == 200
        assert len(target.connections) == 1  # now idle in the pool
        await plane.feed_paced(request_frames(3, "POST", name, "/two", cl(5), b"hel"), [])
        plane.feed(p.encode_data(3, b"lo" + SMUGGLED, fin=True))
        assert (await plane.outcome(3)).reset is p.ErrorCode.BAD_REQUEST
        plane.feed(request_frames(5, "POST", name, "/three", cl(2), b"ok"))
        assert (await plane.outcome(5)).status == 200
    assert [r.path for r in target.requests] == ["/one", "/three"]
    (broken,) = [c for c in target.connections if b"/two" in c]
    assert b"/three" not in broken and bytes(broken).endswith(b"\r\n\r\nhel")  # dropped, not reused
    assert b"/secret" not in target.received


@pytest.mark.parametrize("name", TARGETS)
async def test_a_zero_length_with_body_bytes_never_runs(env: Env, name: str) -> None:
    # Found by the fuzz: the head with Content-Length 0 is a complete request on its own, so the
    # gateway must see the plane's FIN (and no byte) before it sends anything.
    target = env.targets[name]
    async with HostilePlane(env.relay) as plane:
        plane.feed(request_frames(1, "GET", name, "/a", cl(0), b"\x00" + SMUGGLED))
        out = await plane.outcome(1)
    assert out.reset is p.ErrorCode.BAD_REQUEST, out
    assert target.received == b""
