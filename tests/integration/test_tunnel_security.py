"""Tunnel authentication: wrong client cert, no client cert, changed plane CA -> refused, no retry loop."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from gateway.tunnel import AuthRejected, State, TunnelClient, client_ssl_context
from tests.integration.tunnel_support import make_client, make_pki, make_relay, running_plane


async def expect_rejection(client: TunnelClient, match: str) -> None:
    with pytest.raises(AuthRejected, match=match):
        await asyncio.wait_for(client.run(), 10)
    assert client.state is State.STOPPED
    assert client.connects == 0 and client.backoff.attempt < 3  # it gave up instead of retrying


async def test_client_cert_from_another_ca_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    rogue = trustme.CA().issue_cert(common_name=pki.gateway_id)  # same CN, wrong issuer
    rogue.private_key_pem.write_to_path(str(pki.state_dir / "key.pem"))
    rogue.cert_chain_pems[0].write_to_path(str(pki.state_dir / "cert.pem"))
    async with running_plane(pki) as (plane, hub, _runner):
        client = make_client(pki, plane, make_relay(tmp_path, {}))
        await expect_rejection(client, "refuses our client certificate")
        assert hub.sessions() == []


async def test_missing_client_cert_gets_401_and_no_retry(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ctx = ssl.create_default_context(cafile=str(pki.state_dir / "ca.pem"))  # no load_cert_chain
    async with running_plane(pki) as (plane, hub, _runner):
        client = TunnelClient(plane, ctx, make_relay(tmp_path, {}).on_open)
        await expect_rejection(client, "HTTP 401")
        assert hub.sessions() == []


async def test_changed_plane_ca_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    trustme.CA().cert_pem.write_to_path(str(pki.state_dir / "ca.pem"))  # the pin no longer matches
    async with running_plane(pki) as (plane, hub, _runner):
        client = make_client(pki, plane, make_relay(tmp_path, {}))
        await expect_rejection(client, "does not verify against the pinned CA")
        assert hub.sessions() == []


def test_pinned_ca_only_not_the_system_store(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ctx = client_ssl_context(pki.state_dir)
    assert len(ctx.get_ca_certs()) == 1 and ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


def test_missing_identity_is_a_one_line_error(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    (pki.state_dir / "cert.pem").unlink()
    with pytest.raises(Exception, match=r"cert.pem: file not found \(register the gateway first"):
        client_ssl_context(pki.state_dir)
