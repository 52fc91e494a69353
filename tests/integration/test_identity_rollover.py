"""A CA rollover with gateways connected: `mgmtplane ca rollover start|reissue|retire`, none lost.

Three `gateway run` processes stay connected throughout, with calls in flight through one of
them. They learn the new CA over the tunnel (vouched for by a cross-certificate from the old
one), renew from it when the plane signs with it, and drop the old CA when it is retired; the
plane's server certificate moves to the new CA too, and after a restart of the plane every
gateway comes back with the new chain on both sides. A fourth appliance, off through the whole
window, is named by `retire` and must then enrol again: its certificate and pin are both old.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from gateway.daemon import EXIT_REJECTED
from gwcore.pki import spki_sha256
from tests.integration import plane_helpers
from tests.integration.identity_support import (
    Appliance,
    amgmtplane,
    caller,
    registry,
    set_lifetime,
    tunnels_up,
)
from tests.integration.tunnel_support import running_target

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def target_url() -> AsyncIterator[str]:
    async with running_target() as url:
        yield str(url)


def cas_of(gw: Appliance) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((gw.state_dir / "ca.pem").read_bytes())


async def until(predicate, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def server_issuer(port: int, ca: x509.Certificate) -> bool:
    """Whether the plane's TLS server certificate is issued by `ca` right now."""
    served = x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port)).encode())
    try:
        served.verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


async def test_ca_rollover_with_gateways_connected_loses_none(target_url: str, tmp_path: Path) -> None:
    state = tmp_path / "plane"
    state.mkdir(mode=0o700)
    set_lifetime(state, "60s")  # a renewal the plane asks for then comes within 3 s
    port = plane_helpers.free_port()
    plane = plane_helpers.Plane(state, listen=f"127.0.0.1:{port}")
    gateways = [Appliance(tmp_path / f"gw{i}", f"gw-{i}", target_url) for i in range(3)]
    stale = Appliance(tmp_path / "stale", "gw-stale", target_url)
    stop = asyncio.Event()
    try:
        for gw in [*gateways, stale]:
            gw.register(plane.token())
        old_ca = x509.load_pem_x509_certificate((state / "ca.pem").read_bytes())
        for gw in gateways:
            gw.start()
        for gw in gateways:
            await gw.wait_status(lambda r: r.get("state") == "connected", 30)
        up_since = {gw.name: gw.status()["since"] for gw in gateways}
        async with caller(plane) as calls:
            for gw in gateways:
                await calls.until_up(gw.gateway_id)
            busy = asyncio.create_task(calls.keep_busy(gateways[0].gateway_id, stop, workers=2))
            started = time.monotonic()

            done = await amgmtplane(state, "ca", "rollover", "start")
            assert done.returncode == 0, done.stderr
            new_ca = x509.load_pem_x509_certificate((state / "ca-next.pem").read_bytes())
            await until(lambda: all(len(cas_of(gw)) == 2 for gw in gateways), "the new CA on every gateway")
            assert all(spki_sha256(cas_of(gw)[1]) == spki_sha256(new_ca) for gw in gateways)
            assert "phase:    added" in (await amgmtplane(state, "ca", "status")).stdout

            done = await amgmtplane(state, "ca", "rollover", "reissue")
            assert done.returncode == 0, done.stderr
            new_hash = spki_sha256(new_ca)
            ids = {gw.gateway_id for gw in gateways}
            await until(
                lambda: all(registry(plane)["gateways"][g]["issuer"] == new_hash for g in ids),
                "every running gateway renewed from the new CA",
            )
            for gw in gateways:
                await gw.wait_status(
                    lambda r: r.get("renewals", 0) >= 1 and r.get("connects") == 1 + r["renewals"], 15
                )
            status = (await amgmtplane(state, "ca", "status")).stdout
            assert "gateways: 1 not yet on the signing CA" in status and stale.gateway_id in status, status

            refused = await amgmtplane(state, "ca", "rollover", "retire")
            assert refused.returncode == 1 and stale.gateway_id in refused.stderr, refused.stderr
            done = await amgmtplane(state, "ca", "rollover", "retire", "--force")
            assert done.returncode == 0, done.stderr
            await until(lambda: all(len(cas_of(gw)) == 1 for gw in gateways), "the old CA dropped everywhere")
            assert all(spki_sha256(cas_of(gw)[0]) == new_hash for gw in gateways)
            await until(lambda: server_issuer(port, new_ca), "the server certificate from the new CA")
            assert not server_issuer(port, old_ca)
            rolled = time.monotonic() - started
            stop.set()
            await busy
            assert not calls.failures(), calls.failures()[:5]
            in_flight = len(calls.results)
            slowest = max(end - begin for begin, end, _, _ in calls.results)

        # None lost: each gateway stayed up from before the rollover to now, moving tunnels only
        # when it renewed (one new tunnel per renewal, no reconnect, no failed attempt).
        for gw in gateways:
            report = gw.status()
            assert report["state"] == "connected" and report["attempts"] == 0, report
            assert report["since"] == up_since[gw.name], report
            assert report["connects"] == report["renewals"] + 1 == len(tunnels_up(plane, gw.gateway_id)), (
                report
            )

        # The plane restarts: every gateway reconnects, with the new CA on both sides of TLS.
        plane.stop()
        plane = plane_helpers.Plane(state, listen=f"127.0.0.1:{port}")
        for gw in gateways:
            await gw.wait_status(
                lambda r: r.get("state") == "connected" and r["connects"] == r["renewals"] + 2, 30
            )
        async with caller(plane) as calls:
            for gw in gateways:
                await calls.until_up(gw.gateway_id)

        # Off through the whole window: its certificate and its pin are the old CA's.
        stale.start()
        assert await stale.wait_exit(30) == EXIT_REJECTED
        assert stale.status()["stop_code"] == "pin", stale.status()
        print(f"\nCA rollover start->retire with 3 gateways connected: {rolled:.1f} s, {in_flight} calls"
              f" relayed meanwhile (slowest {slowest:.2f} s), 0 failed, 0 reconnects;"
              " the appliance that was off must re-enrol")  # fmt: skip
    finally:
        stop.set()
        for gw in [*gateways, stale]:
            await gw.stop()
        plane.stop()
