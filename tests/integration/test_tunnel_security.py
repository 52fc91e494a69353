"""Tunnel authentication: each refusal stops on its first attempt, by an explicit signal.

Wrong-CA, revoked and expired client certificates get the plane's TLS alert, a missing one the
hub's 401, a changed plane CA fails our pin. That the client stopped after ONE attempt proves it
acted on the signal, not on a count of closes (those are retried for ever: test_tunnel_outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from yarl import URL

from gateway.tunnel.client import Rejected, State, TunnelClient, client_ssl_context
from gateway.tunnel.retry_policy import TUNNEL_ERROR_HEADER
from tests.integration.tunnel_support import (
    Pki,
    free_port,
    make_client,
    make_pki,
    make_relay,
    plane_app,
    plane_ssl_context,
    running_plane,
)


async def expect_rejection(client: TunnelClient, match: str) -> None:
    with pytest.raises(Rejected, match=match):
        await asyncio.wait_for(client.run(), 10)
    assert client.state is State.REJECTED
    assert client.failures == 1 and client.connects == 0  # stopped on the first, explicit, refusal
    assert client.stop_reason is not None and client.action is not None
    report = client.report()
    assert report.state == "rejected" and report.stop_reason == client.stop_reason


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
async def test_client_cert_from_another_ca_gets_unknown_ca(tmp_path: Path, tls: str) -> None:
    pki = make_pki(tmp_path)
    rogue = trustme.CA().issue_cert(common_name=pki.gateway_id)  # same CN, wrong issuer
    rogue.private_key_pem.write_to_path(str(pki.state_dir / "key.pem"))
    rogue.cert_chain_pems[0].write_to_path(str(pki.state_dir / "cert.pem"))
    async with running_plane(pki) as (plane, hub, _runner):
        client = make_client(pki, plane, make_relay(tmp_path, {}))
        if tls == "1.2":  # the alert then comes inside the handshake instead of after our side of it
            client.ssl.maximum_version = ssl.TLSVersion.TLSv1_2
        await expect_rejection(client, "TLS alert unknown_ca")
        assert hub.sessions() == []


def _ca_key(ca: trustme.CA) -> object:
    return serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)


def _ca_cert(ca: trustme.CA) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.cert_pem.bytes())


def _gateway_cert(pki: Pki) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki.state_dir / "cert.pem").read_bytes())


def write_crl(pki: Pki, revoked_serial: int | None) -> Path:
    """A CRL from the plane's CA revoking `revoked_serial` (none when None)."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_ca_cert(pki.ca).subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
    )
    if revoked_serial is not None:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(revoked_serial)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    crl = builder.sign(_ca_key(pki.ca), hashes.SHA256())  # type: ignore[arg-type]
    path = pki.plane_dir / "crl.pem"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


@contextlib.asynccontextmanager
async def plane_with_crl(pki: Pki, crl: Path) -> AsyncIterator[URL]:
    """The test plane, checking client certificates against a CRL as a plane that revokes would."""
    ctx = plane_ssl_context(pki.plane_dir)
    ctx.load_verify_locations(cafile=str(crl))
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    app, _hub = plane_app()
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    try:
        yield URL(f"https://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def test_revoked_client_cert_gets_certificate_revoked(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with plane_with_crl(pki, write_crl(pki, None)) as plane:
        client = make_client(pki, plane, make_relay(tmp_path, {}))
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.connected.wait(), 10)  # the CRL check itself passes
        finally:
            await client.stop(1)
            await task
    async with plane_with_crl(pki, write_crl(pki, _gateway_cert(pki).serial_number)) as plane:
        client = make_client(pki, plane, make_relay(tmp_path, {}))
        await expect_rejection(client, "revoked our client certificate")


async def test_expired_client_cert_gets_certificate_expired(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    key = serialization.load_pem_private_key((pki.state_dir / "key.pem").read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    current = _gateway_cert(pki)
    expired = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(_ca_cert(pki.ca).subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now - dt.timedelta(days=35))
        .sign(_ca_key(pki.ca), hashes.SHA256())  # type: ignore[arg-type]
    )
    (pki.state_dir / "cert.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    async with running_plane(pki) as (plane, hub, _runner):
        client = make_client(pki, plane, make_relay(tmp_path, {}))
        await expect_rejection(client, "TLS alert certificate_expired")
        assert hub.sessions() == []


async def test_missing_client_cert_gets_the_hubs_401(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ctx = ssl.create_default_context(cafile=str(pki.state_dir / "ca.pem"))  # no load_cert_chain
    async with running_plane(pki) as (plane, hub, _runner):
        client = TunnelClient(plane, ctx, make_relay(tmp_path, {}).on_open)
        await expect_rejection(client, "HTTP 401 client-certificate-required")
        assert hub.sessions() == []


async def test_changed_plane_ca_fails_the_pin(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    trustme.CA().cert_pem.write_to_path(str(pki.state_dir / "ca.pem"))  # the pin no longer matches
    async with running_plane(pki) as (plane, hub, _runner):
        client = make_client(pki, plane, make_relay(tmp_path, {}))
        await expect_rejection(client, "does not verify against the CA pinned at registration")
        assert hub.sessions() == []


async def test_a_403_from_in_front_of_the_hub_is_retried(tmp_path: Path) -> None:
    """A WAF or a balancer's maintenance page says 403 too, without the hub's Tunnel-Error header."""
    pki = make_pki(tmp_path)
    seen: list[bool] = []

    async def waf(request: web.Request) -> web.Response:
        seen.append(TUNNEL_ERROR_HEADER in request.headers)
        return web.Response(status=403, text="blocked by policy")

    app = web.Application()
    app.router.add_get("/v1/tunnel", waf)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=plane_ssl_context(pki.plane_dir)).start()
    try:
        client = make_client(pki, URL(f"https://127.0.0.1:{port}"), make_relay(tmp_path, {}))
        task = asyncio.create_task(client.run())
        while client.failures < 5:
            assert not task.done(), task
            await asyncio.sleep(0.02)
        assert client.state in (State.BACKOFF, State.CONNECTING) and client.stop_reason is None
        assert client.last_error is not None and "not from the plane's hub" in client.last_error
        await client.stop(1)
        await task
    finally:
        await runner.cleanup()
    assert len(seen) >= 5


def test_pinned_ca_only_not_the_system_store(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ctx = client_ssl_context(pki.state_dir)
    assert len(ctx.get_ca_certs()) == 1 and ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


def test_missing_identity_is_a_one_line_error(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    (pki.state_dir / "cert.pem").unlink()
    with pytest.raises(Exception, match=r"cert.pem: file not found \(register the gateway first"):
        client_ssl_context(pki.state_dir)
