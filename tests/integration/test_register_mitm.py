"""An interceptor that relays the real CA on GET /v1/ca but terminates TLS itself is refused."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from firstboot.errors import FirstbootError
from firstboot.register.client import register_async
from gwcore.enrol import encode_token, parse_token
from tests.integration.plane_helpers import Plane, register, running_plane, wait_sockets_closed


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path / "plane") as running:
        yield running


async def test_tls_interception_refused_before_secret_leaves(plane: Plane, tmp_path: Path) -> None:
    real_ca_pem = (plane.state_dir / "ca.pem").read_bytes()
    posted: list[bytes] = []

    async def fake_ca(request: web.Request) -> web.Response:
        # The interceptor passes the genuine CA through, so the hash check alone cannot catch it.
        return web.Response(body=real_ca_pem, content_type="application/x-pem-file")

    async def fake_register(request: web.Request) -> web.Response:
        posted.append(await request.read())
        return web.json_response({"error": "never"}, status=500)

    app = web.Application()
    app.router.add_get("/v1/ca", fake_ca)
    app.router.add_post("/v1/register", fake_register)
    mitm_ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    mitm_ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        real = parse_token(plane.token())
        token = encode_token(f"https://127.0.0.1:{port}", real.ca_hash, real.secret, real.expires_at)
        with pytest.raises(FirstbootError) as info:
            await register_async(token, tmp_path / "gw", hostname="gw", timeout=10)
    finally:
        await runner.cleanup()
        await wait_sockets_closed(port)
    assert "possible interception" in str(info.value)
    assert "TLS verification" in str(info.value)
    assert posted == []  # the secret never reached the interceptor
    assert not (tmp_path / "gw" / "identity.json").exists()
    # ... so the genuine plane still honours the token.
    assert register(plane.token(), tmp_path / "gw2").returncode == 0
    assert (
        register(
            encode_token(plane.url, real.ca_hash, real.secret, real.expires_at), tmp_path / "gw3"
        ).returncode
        == 0
    )
