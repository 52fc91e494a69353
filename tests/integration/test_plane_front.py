"""The plane's public listener (mgmtplane.front) at the byte level, over real TLS: what a lean
relay connection does with pipelining, other routes on the same connection, bad input, HTTP/1.0,
Expect: 100-continue, chunked bodies and shutdown.

The relay's behaviour itself (mapping, errors, streaming) is asserted by test_relay_basic and the
other relay tests, which now go through this listener; these tests cover the joins the listener adds.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from mgmtplane.front import FrontSite
from mgmtplane.front_wire import is_relay_target
from mgmtplane.hub import Hub
from tests.integration.tunnel_support import (
    Pki,
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
    runner: web.AppRunner
    ctx: ssl.SSLContext

    @property
    def prefix(self) -> str:
        return f"/v1/gateways/{self.pki.gateway_id}/targets/t1"

    async def connect(self) -> Conn:
        assert self.plane.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", self.plane.port, ssl=self.ctx)
        return Conn(reader, writer)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """A raw HTTP/1.1 client connection: exact bytes out, a strict little response reader in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, head_only: bool = False) -> Response:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                assert name.lower() not in headers, f"header {name} twice"
                headers[name.lower()] = value.strip()
        if head_only or status in (100, 204, 304):
            return Response(status, headers, b"")
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.read()  # ends with the connection
        return Response(status, headers, body)

    async def closed(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    pki = make_pki(tmp_path)
    async with running_target() as target, running_plane(pki) as (plane, hub, runner):
        relay = make_relay(tmp_path, {"t1": target})
        client = make_client(pki, plane, relay)
        task = asyncio.create_task(client.run())
        ctx = ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))
        try:
            await asyncio.wait_for(client.connected.wait(), 5)
            yield Env(pki, plane, hub, runner, ctx)
        finally:
            await client.stop(1)
            await task
            await relay.close()


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: plane\r\n{extra}\r\n".encode()


@pytest.mark.parametrize(
    ("target", "relay"),
    [
        ("/v1/gateways/g/targets/t/", True),
        ("/v1/gateways/g/targets/t/a/b?x=/y", True),
        ("/v1/gateways/g/targets/t", False),  # no path after the target: not the route
        ("/v1/gateways/g/targets/t?q=/x/y", False),  # the query is not part of the path
        ("/v1/gateways//targets/t/x", False),
        ("/v1/gateways/g/health", False),
        ("/v1/tunnel", False),
    ],
)
def test_relay_route_is_recognised_as_aiohttps_router_would(target: str, relay: bool) -> None:
    assert is_relay_target(target) is relay


async def test_pipelined_relay_calls_are_answered_in_order(env: Env) -> None:
    conn = await env.connect()
    try:
        await conn.send(b"".join(get(f"{env.prefix}/sized?size={n}") for n in (10, 70_000, 0, 5)))
        sizes = [len((await conn.response()).body) for _ in range(4)]
        assert sizes == [10, 70_000, 0, 5]
    finally:
        conn.close()


async def test_other_routes_after_relay_calls_on_one_connection_go_to_aiohttp(env: Env) -> None:
    # Lean first; then a route aiohttp serves (the tunnel without a client certificate: 401 with
    # the hub's Tunnel-Error header), a POST with a chunked body to an unknown path (aiohttp's
    # 404), and relay calls again, all in order on the same connection.
    conn = await env.connect()
    try:
        await conn.send(get(f"{env.prefix}/small"))
        assert (await conn.response()).status == 200
        await conn.send(get("/v1/tunnel"))
        tunnel = await conn.response()
        assert tunnel.status == 401 and "tunnel-error" in tunnel.headers
        assert json.loads(tunnel.body)["error"] == "client-certificate-required"
        post = b"POST /nowhere HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        await conn.send(post + get(f"{env.prefix}/small"))
        assert (await conn.response()).status == 404
        again = await conn.response()
        assert again.status == 200 and again.body.startswith(b'{"ok": true')
        # A chunked request body still reaches the target whole through the bridge.
        body = b"x" * 100_000
        await conn.send(
            f"POST {env.prefix}/echo HTTP/1.1\r\nHost: plane\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        )
        echoed = await conn.response()
        assert echoed.status == 200 and echoed.body == body
    finally:
        conn.close()


async def test_chunked_request_body_on_the_lean_path(env: Env) -> None:
    conn = await env.connect()
    try:
        parts = [bytes([i]) * (1000 * i + 1) for i in range(1, 40)]
        await conn.send(
            f"POST {env.prefix}/echo HTTP/1.1\r\nHost: plane\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        for part in parts:
            await conn.send(b"%x\r\n%b\r\n" % (len(part), part))
        await conn.send(b"0\r\n\r\n")
        resp = await conn.response()
        assert resp.status == 200 and resp.body == b"".join(parts)
        assert resp.headers["x-request-length"] == "chunked"
        # The target's answer had no length: the plane re-frames it as chunked, and keeps the connection.
        assert resp.headers["transfer-encoding"] == "chunked"
        await conn.send(get(f"{env.prefix}/small"))
        assert (await conn.response()).status == 200
    finally:
        conn.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(env: Env) -> None:
    conn = await env.connect()
    try:
        body = b"y" * 5000
        await conn.send(
            f"POST {env.prefix}/echo HTTP/1.1\r\nHost: plane\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        interim = await conn.response(head_only=True)
        assert interim.status == 100
        await conn.send(body)
        resp = await conn.response()
        assert resp.status == 200 and resp.body == body
        assert resp.headers["x-request-length"] == str(len(body))
    finally:
        conn.close()


async def test_http_1_0_caller(env: Env) -> None:
    conn = await env.connect()
    try:
        await conn.send(f"GET {env.prefix}/small HTTP/1.0\r\n\r\n".encode())
        resp = await conn.response()
        assert resp.status == 200 and resp.headers["content-length"] == str(len(resp.body))
        assert await conn.closed()  # no keep-alive asked for: the connection ends
    finally:
        conn.close()
    conn = await env.connect()
    try:
        # HTTP/1.0 cannot take chunked: a body of unknown length ends with the connection.
        await conn.send(f"POST {env.prefix}/echo HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd".encode())
        resp = await conn.response()
        assert resp.status == 200 and resp.body == b"abcd" and "transfer-encoding" not in resp.headers
    finally:
        conn.close()


async def test_malformed_request_after_a_relay_call_gets_400_and_the_connection_ends(env: Env) -> None:
    conn = await env.connect()
    try:
        await conn.send(get(f"{env.prefix}/small"))
        assert (await conn.response()).status == 200
        await conn.send(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n")
        bad = await conn.response()
        assert bad.status == 400 and json.loads(bad.body)["error"] == "bad-request"
        assert await conn.closed()
    finally:
        conn.close()


async def test_smuggling_shapes_are_refused(env: Env) -> None:
    # Both Content-Length and chunked, and two lengths: llhttp refuses them as aiohttp does.
    for extra in (
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 4\r\nContent-Length: 5\r\n",
    ):
        conn = await env.connect()
        try:
            await conn.send(f"POST {env.prefix}/echo HTTP/1.1\r\nHost: p\r\n{extra}\r\nabcd".encode())
            resp = await conn.response()
            assert resp.status == 400, extra
            assert await conn.closed()
        finally:
            conn.close()


async def test_offline_gateway_and_unknown_ids_on_the_lean_path(env: Env) -> None:
    conn = await env.connect()
    try:
        await conn.send(get("/v1/gateways/nobody/targets/t1/small"))
        resp = await conn.response()
        assert resp.status == 503
        offline = {"error": "gateway-offline", "message": "gateway nobody is not connected"}
        assert json.loads(resp.body) == offline
        assert resp.headers["content-type"] == "application/json; charset=utf-8"
        await conn.send(get(f"{env.prefix}/small"))  # the connection stays usable
        assert (await conn.response()).status == 200
    finally:
        conn.close()


async def test_head_keeps_the_entity_length_and_sends_no_body(env: Env) -> None:
    conn = await env.connect()
    try:
        head_request = f"HEAD {env.prefix}/small HTTP/1.1\r\nHost: p\r\n\r\n".encode()
        await conn.send(head_request + get(f"{env.prefix}/small"))
        head = await conn.response(head_only=True)
        assert head.status == 200 and head.headers["content-length"] == "1023"
        after = await conn.response()  # the next response starts right after the head: no body bytes
        assert after.status == 200 and len(after.body) == 1023
    finally:
        conn.close()


async def test_shutdown_closes_idle_lean_connections(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with running_plane(pki) as (plane, _hub, runner):
        assert plane.port is not None
        ctx = ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))
        reader, writer = await asyncio.open_connection("127.0.0.1", plane.port, ssl=ctx)
        conn = Conn(reader, writer)
        await conn.send(get(f"/v1/gateways/{pki.gateway_id}/targets/t1/small"))
        assert (await conn.response()).status == 503  # no gateway: still a lean keep-alive connection
        (site,) = runner.sites
        assert isinstance(site, FrontSite)
        await asyncio.wait_for(site.stop(), 5)
        assert await conn.closed()
        conn.close()


async def test_refusal_before_100_continue_closes_at_once(env: Env) -> None:
    # The caller waits for 100 Continue before it sends the body; a refusal answers instead, so
    # no body follows and the connection (its parser mid-request) must end now, not after a wait.
    conn = await env.connect()
    try:
        await conn.send(
            b"POST /v1/gateways/nobody/targets/t1/echo HTTP/1.1\r\nHost: p\r\nContent-Length: 100000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        resp = await conn.response()
        assert resp.status == 503 and resp.headers["connection"] == "close"
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await conn.closed()
        assert loop.time() - start < 1.0
    finally:
        conn.close()


async def test_upgrade_request_on_the_relay_route_is_answered_and_what_follows_dropped(env: Env) -> None:
    # The relay does not upgrade: the call goes through as a plain GET (Upgrade is hop-by-hop),
    # the bytes after it are not HTTP and are not kept, and the connection ends after the answer.
    conn = await env.connect()
    try:
        await conn.send(get(f"{env.prefix}/slow?s=1", "Connection: Upgrade\r\nUpgrade: websocket\r\n"))
        await conn.send(b"\x00junk" * 200_000)  # 1 MB while the call is in flight
        await asyncio.sleep(0.3)
        (site,) = env.runner.sites
        assert isinstance(site, FrontSite) and site._front is not None
        held = [len(c._raw or b"") for c in site._front.conns]
        assert held and max(held) == 0, held  # nothing of it is kept
        resp = await conn.response()
        assert resp.status == 200 and resp.body == b"late"
        assert await conn.closed()
    finally:
        conn.close()


async def test_upgrade_request_for_another_route_after_a_relay_call_goes_to_aiohttp(env: Env) -> None:
    conn = await env.connect()
    try:
        await conn.send(get(f"{env.prefix}/small"))
        assert (await conn.response()).status == 200
        upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        await conn.send(get("/v1/tunnel", upgrade + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"))
        refused = await conn.response()  # the hub's answer: no client certificate on this connection
        assert refused.status == 401 and json.loads(refused.body)["error"] == "client-certificate-required"
    finally:
        conn.close()


async def test_a_request_head_of_endless_header_lines_is_refused_while_it_arrives(env: Env) -> None:
    conn = await env.connect()
    try:
        await conn.send(f"GET {env.prefix}/small HTTP/1.1\r\nHost: p\r\n".encode())
        try:
            for i in range(400):  # 400 KiB of 1 KiB header lines, never ending the head
                await conn.send(b"X-Pad-%d: %s\r\n" % (i, b"v" * 1000))
        except ConnectionError:
            pass  # refused and closed while we were still sending: what is asserted next
        resp = await conn.response()
        assert resp.status == 400 and "head over" in json.loads(resp.body)["message"]
        assert await conn.closed()
    finally:
        conn.close()
