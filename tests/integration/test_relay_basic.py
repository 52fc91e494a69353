"""End to end on loopback: plane hub + tunnel client + relay + real target, real TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest

from tests.integration.tunnel_support import make_client, make_pki, make_relay, running_plane, running_target


@pytest.fixture
def pki(tmp_path: Path):
    return make_pki(tmp_path)


def caller_ssl(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))


async def test_small_get_round_trip(pki, tmp_path: Path) -> None:
    async with running_target() as target, running_plane(pki) as (plane, hub, _runner):
        relay = make_relay(tmp_path, {"t1": target})
        client = make_client(pki, plane, relay)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.connected.wait(), 5)
            async with aiohttp.ClientSession() as s:
                url = plane / "v1/gateways" / pki.gateway_id / "targets/t1/small"
                async with s.get(url, ssl=caller_ssl(pki)) as r:
                    body = await r.read()
                    assert r.status == 200, body
                    assert body.startswith(b'{"ok": true')
                    assert r.headers["X-Gateway-Filter"] == "test-passthrough; removed=0"
            sessions = hub.sessions()
            assert sessions[0]["id"] == pki.gateway_id and sessions[0]["connected"]
        finally:
            await client.stop(1)
            await task
            await relay.close()
