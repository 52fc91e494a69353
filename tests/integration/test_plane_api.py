"""The plane's HTTP API over real TLS: CA download, health, registration errors, admin auth, mTLS."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from firstboot.register.client import load_identity
from gateway.tunnel import client as tunnel
from gwcore.enrol import parse_token
from tests.integration.plane_helpers import Plane, register, running_plane, wait_sockets_closed


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path / "plane") as running:
        yield running


def _ctx(plane: Plane, client_dir: Path | None = None) -> ssl.SSLContext:
    """Trust the plane's CA; present a gateway identity if given."""
    ctx = ssl.create_default_context(cafile=str(plane.state_dir / "ca.pem"))
    if client_dir is not None:
        ctx.load_cert_chain(str(client_dir / "cert.pem"), str(client_dir / "key.pem"))
    return ctx


@contextlib.asynccontextmanager
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        yield http


@pytest.fixture(autouse=True)
async def _no_lingering_tls(plane: Plane) -> AsyncIterator[None]:
    yield
    await wait_sockets_closed(plane.port)
    gc.collect()  # a leaked transport is then reported in the test that leaked it


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_ca_and_health_are_public(plane: Plane) -> None:
    token = parse_token(plane.token())
    async with _session() as http:
        async with http.get(f"{plane.url}/v1/ca", ssl=_ctx(plane)) as resp:
            assert resp.status == 200 and resp.content_type == "application/x-pem-file"
            assert await resp.read() == (plane.state_dir / "ca.pem").read_bytes()
        async with http.get(f"{plane.url}/v1/health", ssl=_ctx(plane)) as resp:
            body = await resp.json()
    assert body["status"] == "ok" and body["ca_hash"] == token.ca_hash


async def test_server_cert_verifies_for_ipv4_and_localhost(plane: Plane) -> None:
    async with _session() as http:
        url = plane.url.replace("127.0.0.1", "localhost")
        async with http.get(f"{url}/v1/health", ssl=_ctx(plane)) as resp:
            assert resp.status == 200


async def test_admin_api_requires_bearer_token(plane: Plane, tmp_path: Path) -> None:
    assert register(plane.token(), tmp_path / "gw", "--hostname", "edge-1").returncode == 0
    identity = load_identity(tmp_path / "gw")
    assert identity is not None
    admin = plane.admin_token()
    ctx = _ctx(plane)
    async with _session() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {admin}"}):
            paths = ("/v1/gateways", f"/v1/gateways/{identity.gateway_id}", "/v1/gateways/x/targets/t/p",
                     "/v1/rollout", "/v1/sites")  # fmt: skip
            for path in paths:
                async with http.get(f"{plane.url}{path}", ssl=ctx, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert (await resp.json())["error"] == "unauthorized"
        auth = {"Authorization": f"Bearer {admin}"}
        async with http.get(f"{plane.url}/v1/gateways", ssl=ctx, headers=auth) as resp:
            listing = await resp.json()
        async with http.get(f"{plane.url}/v1/gateways/{identity.gateway_id}", ssl=ctx, headers=auth) as resp:
            one = await resp.json()
        async with http.get(f"{plane.url}/v1/gateways/nope", ssl=ctx, headers=auth) as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "gateway-unknown"
    assert [g["gateway_id"] for g in listing["gateways"]] == [identity.gateway_id]
    assert one["hostname"] == "edge-1" and one["connected"] is False
    cert = x509.load_pem_x509_certificate((tmp_path / "gw" / "cert.pem").read_bytes())
    assert one["cert_serial"] == format(cert.serial_number, "x")
    assert one["cert_fingerprint"] == "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


async def _post(plane: Plane, payload: object) -> tuple[int, dict[str, str]]:
    async with (
        _session() as http,
        http.post(f"{plane.url}/v1/register", json=payload, ssl=_ctx(plane)) as resp,
    ):
        return resp.status, await resp.json()


async def test_register_api_errors_keep_the_token(plane: Plane, tmp_path: Path) -> None:
    secret = parse_token(plane.token()).secret
    good_csr = _csr(ec.generate_private_key(ec.SECP256R1()))
    assert await _post(plane, [1]) == (400, {"error": "bad-request", "message": "body must be a JSON object"})
    status, body = await _post(plane, {"token_secret": secret, "csr": "junk"})
    assert (status, body["error"]) == (400, "bad-csr")
    status, body = await _post(
        plane, {"token_secret": secret, "csr": _csr(rsa.generate_private_key(65537, 2048))}
    )
    assert (status, body["error"]) == (400, "bad-csr") and "P-256" in body["message"]
    status, body = await _post(plane, {"token_secret": secret, "csr": good_csr, "hostname": "bad host!"})
    assert (status, body["error"]) == (400, "bad-request")
    status, body = await _post(plane, {"token_secret": "nope", "csr": good_csr})
    assert (status, body["error"]) == (401, "token-unknown")
    # None of the refusals above spent the token.
    status, body = await _post(plane, {"token_secret": secret, "csr": good_csr, "hostname": "ok"})
    assert status == 200 and set(body) == {"gateway_id", "certificate", "ca"}
    status, body = await _post(
        plane, {"token_secret": secret, "csr": _csr(ec.generate_private_key(ec.SECP256R1()))}
    )
    assert (status, body["error"]) == (403, "token-used")


async def test_register_refuses_deeply_nested_json(plane: Plane) -> None:
    # 10 kB, under the body limit, but nested past the JSON parser's recursion limit.
    deep = b"[" * 5000 + b"]" * 5000
    async with (
        _session() as http,
        http.post(
            f"{plane.url}/v1/register",
            data=deep,
            headers={"Content-Type": "application/json"},
            ssl=_ctx(plane),
        ) as resp,
    ):
        assert resp.status == 400
        assert await resp.json() == {"error": "bad-request", "message": "body is not JSON"}


async def _health_with(plane: Plane, ctx: ssl.SSLContext) -> int:
    async with _session() as http, http.get(f"{plane.url}/v1/health", ssl=ctx) as resp:
        await resp.read()
        return resp.status


async def test_client_cert_from_another_ca_refused_in_tls(plane: Plane, tmp_path: Path) -> None:
    assert register(plane.token(), tmp_path / "good").returncode == 0
    with running_plane(tmp_path / "other") as other:
        assert register(other.token(), tmp_path / "foreign").returncode == 0
    assert await _health_with(plane, _ctx(plane, tmp_path / "good")) == 200
    with pytest.raises(aiohttp.ClientError):
        await _health_with(plane, _ctx(plane, tmp_path / "foreign"))
    # The plane's own server certificate is signed by the right CA but lacks clientAuth.
    server_as_client = _ctx(plane)
    server_as_client.load_cert_chain(
        str(plane.state_dir / "server.pem"), str(plane.state_dir / "server-key.pem")
    )
    with pytest.raises(aiohttp.ClientError):
        await _health_with(plane, server_as_client)


async def test_tunnel_needs_a_client_cert(plane: Plane) -> None:
    async with _session() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{plane.url}/v1/tunnel", ssl=_ctx(plane))
    assert info.value.status in (401, 403)


async def test_live_tunnel_shows_in_admin_api(plane: Plane, tmp_path: Path) -> None:
    from yarl import URL

    gw = tmp_path / "gw"
    assert register(plane.token(), gw).returncode == 0
    identity = load_identity(gw)
    assert identity is not None
    client = tunnel.TunnelClient(URL(identity.plane_url), tunnel.client_ssl_context(gw), lambda stream: None)
    runner = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.connected.wait(), 15)
        auth = {"Authorization": f"Bearer {plane.admin_token()}"}
        async with (
            _session() as http,
            http.get(f"{plane.url}/v1/gateways/{identity.gateway_id}", ssl=_ctx(plane), headers=auth) as resp,
        ):
            body = await resp.json()
        assert body["connected"] is True and body["tunnel"]["id"] == identity.gateway_id
    finally:
        await client.stop()
        runner.cancel()
        with pytest.raises((asyncio.CancelledError, Exception)):
            await runner


async def test_concurrent_registrations_with_one_token(plane: Plane) -> None:
    secret = parse_token(plane.token()).secret
    csrs = [_csr(ec.generate_private_key(ec.SECP256R1())) for _ in range(10)]
    results = await asyncio.gather(*(_post(plane, {"token_secret": secret, "csr": c}) for c in csrs))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [403] * 9
