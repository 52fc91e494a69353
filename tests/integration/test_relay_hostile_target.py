"""A target that answers with headers the tunnel cannot carry fails only its own stream.

The frame codec rejects header names that are not HTTP tokens and values with CR, LF or NUL.
Before the encoder checked them too, such a response reached the plane's decoder as a protocol
error and ended the whole tunnel connection, every other stream with it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.tunnel_support import make_client, make_pki, make_relay, running_plane

pytestmark = pytest.mark.integration

ANSWERS = {
    "/bad-name": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad@Name: x\r\n\r\nok",
    "/bare-lf": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Split: one\ntwo\r\n\r\nok",
    "/nul": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Nul: a\x00b\r\n\r\nok",
    "/good": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fine: yes\r\n\r\nok",
}


async def raw_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One response per connection, picked by the request path; then close."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        writer.write(ANSWERS.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
        await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def tunnel(tmp_path: Path) -> AsyncIterator[tuple[str, ssl.SSLContext, object]]:
    pki = make_pki(tmp_path)
    server = await asyncio.start_server(raw_target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, running_plane(pki) as (plane, _hub, _runner):
        relay = make_relay(tmp_path, {"raw": f"http://127.0.0.1:{port}"})
        client = make_client(pki, plane, relay)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.connected.wait(), 5)
            base = f"{plane}/v1/gateways/{pki.gateway_id}/targets/raw"
            yield base, ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem")), client
        finally:
            await client.stop(1)
            await task
            await relay.close()


@pytest.mark.parametrize("path", ["/bad-name", "/bare-lf", "/nul"])
async def test_an_uncarriable_header_resets_only_that_stream(tunnel, path: str) -> None:  # type: ignore[no-untyped-def]
    base, caller_ssl, client = tunnel
    mux = client.mux
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}{path}", ssl=caller_ssl) as r:
            body = await r.read()
            assert r.status == 502, body
            assert json.loads(body)["error"] == "target-error"
        async with http.get(f"{base}/good", ssl=caller_ssl) as r:
            assert r.status == 200 and await r.read() == b"ok" and r.headers["X-Fine"] == "yes"
    assert client.mux is mux and not mux.closed, "the tunnel connection was torn down"
