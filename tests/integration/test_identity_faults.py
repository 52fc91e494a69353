"""Renewal when things go wrong: a plane that fails to sign, an older plane without control
messages, a hostile or repeated `renew`, a certificate renewed but never stored, and a clone.

The first two run `gateway run` against an in-process hub whose `renew` handler the test writes
(or whose HELLO lacks control.1); the others speak to `mgmtplane serve` over real TLS with the
tunnel client itself, so the test can send what a well-behaved gateway never would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from gateway.tunnel.backoff import Backoff
from gateway.tunnel.client import Rejected, TunnelClient, client_ssl_context
from gwcore import identity as idm
from gwcore import protocol as p
from gwcore.control import ControlChannel, ControlError, Message
from gwcore.streams import Mux
from mgmtplane import hub as hub_module
from mgmtplane.ca import PlaneCA, cert_fingerprint, new_ca
from tests.integration import plane_helpers
from tests.integration.identity_support import Appliance, console, registry
from tests.integration.tunnel_support import Pki, make_relay, running_plane, running_target

pytestmark = pytest.mark.timeout(120)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_for(key: ec.EllipticCurvePrivateKey, cn: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def plane_pki(root: Path, state_dir: Path, lifetime: dt.timedelta) -> tuple[Pki, PlaneCA]:
    """A plane CA (mgmtplane's own code), its server certificate, and one gateway identity."""
    ca = new_ca()
    plane_dir = root / "plane"
    plane_dir.mkdir(parents=True)
    cert, key = ca.issue_server_cert(["127.0.0.1", "localhost"])
    (plane_dir / "server.pem").write_bytes(cert)
    (plane_dir / "server-key.pem").write_bytes(key)
    (plane_dir / "ca.pem").write_bytes(ca.cert_pem)
    gateway_id = str(uuid.uuid4())
    gw_key = ec.generate_private_key(ec.SECP256R1())
    state_dir.mkdir(mode=0o700, parents=True)
    (state_dir / "key.pem").write_bytes(_key_pem(gw_key))
    os.chmod(state_dir / "key.pem", 0o600)
    (state_dir / "cert.pem").write_bytes(ca.sign_csr(csr_for(gw_key, "x"), gateway_id, lifetime))
    (state_dir / "ca.pem").write_bytes(ca.cert_pem)
    return Pki(root, None, gateway_id), ca  # type: ignore[arg-type]


@pytest.fixture
async def target_url() -> AsyncIterator[str]:
    async with running_target() as url:
        yield str(url)


async def test_a_failing_plane_keeps_the_old_pair_and_retries_with_backoff(
    target_url: str, tmp_path: Path
) -> None:
    gw = Appliance(tmp_path / "root", "gw-faults", target_url)
    pki, ca = plane_pki(tmp_path, gw.state_dir, dt.timedelta(seconds=6))
    original = (gw.state_dir / "cert.pem").read_bytes()
    attempts: list[float] = []
    seen_failing: list[dict[str, Any]] = []

    on_disk: list[bytes] = []

    async def renew(gateway_id: str, message: Message) -> Message:
        attempts.append(time.monotonic())
        on_disk.append((gw.state_dir / "cert.pem").read_bytes())  # what the gateway holds as it asks
        if len(attempts) <= 3:
            raise ControlError("internal", "signing backend down")
        cert = ca.sign_csr(idm.parse_renew_request(message), gateway_id, dt.timedelta(seconds=60))
        return idm.renewed_reply(cert.decode(), time.time() + 60)

    async with running_plane(pki) as (plane, hub, _runner):
        hub.register_control(idm.RENEW, renew)
        gw.plane_url = str(plane)
        gw.start()
        try:

            def watch(report: dict[str, Any]) -> bool:
                if report.get("identity") == "renewal-failing":
                    seen_failing.append(report)
                return report.get("renewals") == 1

            final = await gw.wait_status(watch, 30)
        finally:
            await gw.stop()
    assert seen_failing, "the failures never showed in the status file"
    assert "signing backend down" in seen_failing[0]["renew_error"]
    assert on_disk == [original] * 4  # the old pair stays while renewal fails
    assert all(s["state"] == "connected" for s in seen_failing)  # and so does the tunnel
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 4 and gaps[2] > 1.5 * gaps[0], gaps  # backing off
    assert final["identity"] == "valid" and final["renew_error"] is None and final["connects"] == 2
    assert (gw.state_dir / "cert.pem").read_bytes() != original
    print(f"\nrenewal retries after failures: {', '.join(f'{g:.3f} s' for g in gaps)}")


async def test_an_older_plane_without_control_messages_works_and_says_it_will_not_renew(
    target_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plane of the first revision: its HELLO announces no control.1.
    monkeypatch.setattr(hub_module, "Mux", lambda *a, **kw: Mux(*a, **{**kw, "capabilities": ()}))
    gw = Appliance(tmp_path / "root", "gw-old-plane", target_url)
    pki, _ca = plane_pki(tmp_path, gw.state_dir, dt.timedelta(days=30))
    async with running_plane(pki) as (plane, _hub, _runner):
        gw.plane_url = str(plane)
        gw.start()
        try:
            report = await gw.wait_status(lambda r: r.get("identity") == "renewal-unavailable", 20)
            ctx = ssl.create_default_context(cafile=str(pki.plane_dir / "ca.pem"))
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{plane}/v1/gateways/{pki.gateway_id}/targets/t1/small", ssl=ctx) as r,
            ):
                assert r.status == 200  # the tunnel and the relay work as before
            screen = console(gw.root)
        finally:
            await gw.stop()
    assert report["state"] == "connected" and "no control.1" in report["renew_error"], report
    assert "NOT renewed (the plane does not take control messages" in screen, screen
    assert "re-register before then" in screen


async def _client(plane_url: str, state_dir: Path, tmp_path: Path) -> tuple[TunnelClient, ControlChannel]:
    control = ControlChannel("test-gateway")
    client = TunnelClient(
        URL(plane_url),
        client_ssl_context(state_dir),
        make_relay(tmp_path, {}).on_open,
        limits=p.Limits(heartbeat_ms=1000),
        backoff=Backoff(0.05, 0.3),
        control=control,
    )
    return client, control


async def _connected(client: TunnelClient, control: ControlChannel) -> asyncio.Task[None]:
    task = asyncio.create_task(client.run())
    deadline = time.monotonic() + 15
    while not control.ready:
        assert not task.done(), task.exception()
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    return task


async def _stop(client: TunnelClient, task: asyncio.Task[None]) -> None:
    await client.stop(0.5)
    await asyncio.wait_for(task, 10)


async def test_the_plane_signs_only_a_new_key_for_the_caller_and_admits_the_pair_in_use(
    tmp_path: Path,
) -> None:
    with plane_helpers.running_plane(tmp_path / "plane") as plane:
        state = tmp_path / "gw"
        assert plane_helpers.register(plane.token(), state).returncode == 0
        gid = json.loads((state / "identity.json").read_text())["gateway_id"]
        key0 = serialization.load_pem_private_key((state / "key.pem").read_bytes(), None)
        fp0 = cert_fingerprint(x509.load_pem_x509_certificate((state / "cert.pem").read_bytes()))
        client, control = await _client(plane.url, state, tmp_path)
        task = await _connected(client, control)
        try:

            async def refused(message: Message, code: str) -> str:
                with pytest.raises(ControlError) as caught:
                    await control.request(message, timeout=10)
                assert caught.value.code == code, caught.value
                return str(caught.value)

            new_key = ec.generate_private_key(ec.SECP256R1())
            csr = csr_for(new_key, gid)
            await refused({"type": "renew", "v": 2, "csr": csr}, idm.UNSUPPORTED_VERSION)
            await refused({"type": "renew", "v": 1, "csr": 7}, idm.BAD_MESSAGE)
            said = await refused(idm.renew_request(csr_for(new_key, str(uuid.uuid4()))), idm.BAD_CSR)
            assert f"this gateway's id {gid}" in said  # another gateway's id: never signed
            said = await refused(idm.renew_request(csr_for(key0, gid)), idm.BAD_CSR)  # type: ignore[arg-type]
            assert "the key must be new" in said
            junk = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            await refused(idm.renew_request(junk), idm.BAD_CSR)
            reply = await control.request(idm.renew_request(csr), timeout=10)
            cert1 = x509.load_pem_x509_certificate(idm.parse_renewed(reply).encode())
            assert cert1.public_key() == new_key.public_key()
            record = registry(plane)["gateways"][gid]
            assert record["cert_fingerprint"] == cert_fingerprint(cert1) and record["previous"] == [fp0]
            # Four renewals in a row spent the gateway's burst: the plane says to come back later.
            await refused(
                idm.renew_request(csr_for(ec.generate_private_key(ec.SECP256R1()), gid)), idm.RATE_LIMITED
            )
        finally:
            await _stop(client, task)

        # The gateway lost power before storing cert1: its old certificate is still admitted.
        client, control = await _client(plane.url, state, tmp_path)
        await _stop(client, await _connected(client, control))
        assert registry(plane)["gateways"][gid]["previous"] == [fp0]

        # With cert1 stored, the gateway comes back on it, and the old one is no longer admitted.
        renewed = tmp_path / "gw-renewed"
        renewed.mkdir(mode=0o700)
        (renewed / "key.pem").write_bytes(_key_pem(new_key))
        (renewed / "cert.pem").write_bytes(cert1.public_bytes(serialization.Encoding.PEM))
        (renewed / "ca.pem").write_bytes((state / "ca.pem").read_bytes())
        client, control = await _client(plane.url, renewed, tmp_path)
        await _stop(client, await _connected(client, control))
        assert registry(plane)["gateways"][gid]["previous"] == []

        # A clone (or a restored snapshot) with the old pair is refused from now on.
        client, _control = await _client(plane.url, state, tmp_path)
        with pytest.raises(Rejected, match="HTTP 403 certificate-superseded"):
            await asyncio.wait_for(client.run(), 15)
        assert client.stop_code == "superseded" and client.failures == 1
