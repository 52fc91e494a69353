"""End to end on loopback: plane hub + tunnel client + relay + real target servers, real TLS."""

from __future__ import annotations

import asyncio
import hashlib
import io
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
from yarl import URL

from gateway.relay.relay import Relay
from gateway.tunnel.client import TunnelClient
from mgmtplane.hub import Hub
from tests.integration.tunnel_support import (
    Pki,
    free_port,
    make_client,
    make_pki,
    make_relay,
    running_plane,
    running_target,
)


@dataclass
class Env:
    pki: Pki
    plane: URL
    hub: Hub
    relay: Relay
    client: TunnelClient
    http: aiohttp.ClientSession
    caller_ssl: ssl.SSLContext

    def url(self, target: str, path: str) -> str:
        return f"{self.plane}/v1/gateways/{self.pki.gateway_id}/targets/{target}{path}"

    async def get(self, target: str, path: str, **kw: object) -> tuple[int, dict[str, str], bytes]:
        async with self.http.get(self.url(target, path), ssl=self.caller_ssl, **kw) as r:  # type: ignore[arg-type]
            return r.status, dict(r.headers), await r.read()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    pki = make_pki(tmp_path)
    tls_ca = trustme.CA()
    server_cert = tls_ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_ctx)
    tls_ca.cert_pem.write_to_path(str(tmp_path / "target-ca.pem"))
    der = ssl.PEM_cert_to_DER_cert(server_cert.cert_chain_pems[0].bytes().decode())
    pin = "sha256:" + hashlib.sha256(der).hexdigest()
    async with (
        running_target() as target,
        running_target(server_ctx) as tls_target,
        running_plane(pki) as (plane, hub, _runner),
    ):
        local = {"allow_private": ["127.0.0.1"]}
        relay = make_relay(
            tmp_path,
            {
                "t1": target,
                "noallow": target,
                "refused": f"http://127.0.0.1:{free_port()}",
                "slow": target,
                "tls-ca": tls_target,
                "tls-pin": tls_target,
                "tls-badpin": tls_target,
                "tls-system": tls_target,
                "vs": target,
            },
            extra={
                "noallow": {"allow_private": []},
                "slow": {"timeout": {"connect": 1, "total": 0.5}},
                "tls-ca": {"tls": {"ca_file": str(tmp_path / "target-ca.pem")}, **local},
                "tls-pin": {"tls": {"fingerprint": pin}},
                "tls-badpin": {"tls": {"fingerprint": "sha256:" + "00" * 32}},
                "vs": {"kind": "vsphere"},
            },
        )
        client = make_client(pki, plane, relay)
        task = asyncio.create_task(client.run())
        caller_ssl = ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))
        try:
            await asyncio.wait_for(client.connected.wait(), 5)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                yield Env(pki, plane, hub, relay, client, http, caller_ssl)
        finally:
            await client.stop(1)
            await task
            await relay.close()


async def test_small_get_round_trip(env: Env) -> None:
    status, headers, body = await env.get("t1", "/small")
    assert status == 200, body
    assert body.startswith(b'{"ok": true') and len(body) > 1000
    assert headers["X-Gateway-Filter"] == "test-passthrough; removed=0"
    (session,) = env.hub.sessions()
    assert session["id"] == env.pki.gateway_id and session["connected"] and session["relayed"] == 1


async def test_request_and_response_bodies_stream_both_ways(env: Env) -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(64):
            yield bytes([i]) * 65536

    async with env.http.post(env.url("t1", "/echo"), data=body(), ssl=env.caller_ssl) as r:
        got = await r.read()
    assert r.status == 200
    assert got == b"".join(bytes([i]) * 65536 for i in range(64))


async def test_fixed_length_request_body(env: Env) -> None:
    body = bytes(range(256)) * 12_000  # 3 MB, sent with Content-Length and Expect: 100-continue
    url = env.url("t1", "/echo")
    async with env.http.post(url, data=io.BytesIO(body), ssl=env.caller_ssl, expect100=True) as r:
        assert r.status == 200
        assert r.headers["X-Request-Length"] == str(len(body))  # not re-chunked on the way
        assert await r.read() == body


async def test_buffered_response_goes_through_the_metadata_filter(env: Env) -> None:
    status, headers, body = await env.get("t1", "/inventory")
    assert status == 200, body
    assert __import__("json").loads(body) == [{"id": i, "name": f"vm-{i}"} for i in range(3)]
    assert b"CANARY" not in body and "X-Secret-Header" not in headers
    assert headers["X-Gateway-Filter"] == "test-filtered; removed=3"
    assert headers["Content-Length"] == str(len(body))


async def test_query_and_headers_reach_the_target_but_plane_credentials_do_not(env: Env) -> None:
    status, _h, body = await env.get(
        "t1",
        "/headers?a=1&b=%2F",
        headers={
            "Authorization": "Bearer plane-secret",
            "X-Target-Authorization": "Basic dGFyZ2V0",
            "X-Foo": "bar",
        },
    )
    assert status == 200
    seen = {k.lower(): v for k, v in __import__("json").loads(body).items()}
    assert seen["authorization"] == "Basic dGFyZ2V0" and seen["x-foo"] == "bar"
    assert "plane-secret" not in body.decode()


@pytest.mark.parametrize(
    ("target", "path", "status", "code"),
    [
        ("nope", "/small", 404, "target-unknown"),
        ("refused", "/small", 502, "target-refused"),
        ("slow", "/slow?s=5", 504, "target-timeout"),
        ("noallow", "/small", 403, "address-forbidden"),
        ("tls-badpin", "/small", 502, "tls-verify-failed"),
        ("tls-system", "/small", 502, "tls-verify-failed"),
        ("vs", "/api/vcenter/vm", 403, "filtered"),
        ("t1", "/huge-headers", 502, "target-error"),  # 80 KB of headers > the 64 KiB head limit
    ],
)
async def test_failures_become_stable_codes(env: Env, target: str, path: str, status: int, code: str) -> None:
    got_status, _h, body = await env.get(target, path)
    assert got_status == status, body
    assert __import__("json").loads(body)["error"] == code


@pytest.mark.parametrize("target", ["tls-ca", "tls-pin"])
async def test_tls_targets_with_ca_file_or_pin(env: Env, target: str) -> None:
    status, _h, body = await env.get(target, "/small")
    assert status == 200, body


async def test_redirect_to_an_internal_address_is_returned_not_followed(env: Env) -> None:
    status, headers, _body = await env.get(
        "t1", "/redirect?to=http://169.254.169.254/latest/meta-data/", allow_redirects=False
    )
    assert status == 302
    assert headers["Location"] == "http://169.254.169.254/latest/meta-data/"


async def test_target_failing_mid_body_aborts_the_callers_response(env: Env) -> None:
    async with env.http.get(env.url("t1", "/truncated"), ssl=env.caller_ssl) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    await asyncio.sleep(0.1)
    assert env.client.mux is not None and env.client.mux.streams == {}
    status, _h, _b = await env.get("t1", "/small")  # the tunnel itself is fine
    assert status == 200


async def test_head_request_and_empty_bodies(env: Env) -> None:
    async with env.http.head(env.url("t1", "/small"), ssl=env.caller_ssl) as r:
        assert r.status == 200 and await r.read() == b""
        # A HEAD keeps the entity's length, not the empty body's (the plane streams it as is).
        assert r.headers["Content-Length"] == "1023"
    status, headers, body = await env.get("t1", "/small")  # ends in one tunnel read: one write
    assert status == 200 and headers["Content-Length"] == str(len(body)) == "1023"
    status, _h, body = await env.get("t1", "/sized?size=0")
    assert status == 200 and body == b""


async def test_oversized_request_head_is_refused_without_hurting_the_tunnel(env: Env) -> None:
    headers = {f"X-Big-{i}": "v" * 4000 for i in range(20)}  # 80 KB > the gateway's 64 KiB head limit
    status, _h, body = await env.get("t1", "/small", headers=headers)
    assert status == 400 and b"bad-request" in body
    status, _h, _b = await env.get("t1", "/small")
    assert status == 200


async def test_500_concurrent_streams(env: Env) -> None:
    async def one(i: int) -> int:
        status, _h, body = await env.get("t1", f"/sized?size={1000 + i}")
        assert len(body) == 1000 + i
        return status

    statuses = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(500))), 60)
    assert statuses == [200] * 500
    await asyncio.sleep(0.1)
    assert env.client.mux is not None and env.client.mux.streams == {}


async def test_stalled_reader_does_not_slow_other_streams(env: Env) -> None:
    # Open a large response and never read it: its stream runs out of credit, nothing else does.
    stalled = await env.http.get(env.url("t1", "/sized?size=200000000"), ssl=env.caller_ssl)
    try:
        assert stalled.status == 200
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(3):
            status, _h, body = await env.get("t1", "/sized?size=20000000")
            assert status == 200 and len(body) == 20_000_000
        assert loop.time() - start < 20
    finally:
        stalled.close()


async def test_caller_going_away_cancels_the_stream_on_the_gateway(env: Env) -> None:
    resp = await env.http.get(env.url("t1", "/sized?size=500000000"), ssl=env.caller_ssl)
    assert resp.status == 200
    await resp.content.read(1 << 20)
    resp.close()  # drop the connection mid-body
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while env.relay._tasks and loop.time() < deadline:
        await asyncio.sleep(0.02)
    assert not env.relay._tasks
    assert env.client.mux is not None and env.client.mux.streams == {}
