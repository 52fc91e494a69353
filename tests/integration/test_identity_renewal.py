"""Certificate renewal with `mgmtplane serve` and `gateway run`: short lifetimes, streams in flight.

The plane signs certificates of a few seconds; the gateway renews each two thirds into its life
over the tunnel's control channel, stores the pair atomically and moves the tunnel to it, make
before break. Ten renewals in a row with calls in flight: no call fails, and the plane sees one
new tunnel per renewal and no other (no reconnect storm).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration import plane_helpers
from tests.integration.identity_support import (
    Appliance,
    caller,
    console,
    registry,
    set_lifetime,
    summary,
    tunnels_up,
)
from tests.integration.tunnel_support import running_target

RENEWALS = 10


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[plane_helpers.Plane]:
    state = tmp_path / "plane"
    state.mkdir(mode=0o700)
    set_lifetime(state, "5s")
    with plane_helpers.running_plane(state) as running:
        yield running


@pytest.fixture
async def target_url() -> AsyncIterator[str]:
    async with running_target() as url:
        yield str(url)


@pytest.mark.timeout(240)
async def test_ten_renewals_in_a_row_with_streams_in_flight(
    plane: plane_helpers.Plane, target_url: str, tmp_path: Path
) -> None:
    gw = Appliance(tmp_path / "root", "gw-renew", target_url)
    gw.register(plane.token())
    first_cert = (gw.state_dir / "cert.pem").read_bytes()
    gid = gw.gateway_id
    gw.start()
    try:
        async with caller(plane) as calls:
            await calls.until_up(gid)
            stop = asyncio.Event()
            busy = asyncio.create_task(calls.keep_busy(gid, stop))
            final = await gw.wait_status(lambda r: r.get("renewals", 0) >= RENEWALS, 150)
            stop.set()
            await busy
            screen = console(gw.root)
        assert gw.proc is not None and gw.proc.poll() is None
    finally:
        await gw.stop()

    # Every call through the tunnel succeeded, across every move to a new connection.
    failed = calls.failures()
    assert not failed, failed[:5]
    assert len(calls.results) >= 4 * RENEWALS
    # One new tunnel per renewal, none besides (the gateway counts them, and so does the plane).
    tunnels = tunnels_up(plane, gid)
    assert final["connects"] == RENEWALS + 1, final
    assert len(tunnels) == RENEWALS + 1
    assert final["identity"] == "valid" and final["renew_error"] is None
    assert final["cert_not_after"] - 5 < final["renew_at"] < final["cert_not_after"]
    # Calls were in flight while the tunnel moved: each new tunnel came up under running calls.
    spanning = [sum(start < t < end for start, end, _, _ in calls.results) for t in tunnels[1:]]
    assert all(n >= 1 for n in spanning), spanning

    # On disk: one pair in use, through one pointer; the key 0600; the plane has the same certificate.
    assert os.readlink(gw.state_dir / "key.pem") == "pairs/current/key.pem"
    assert os.readlink(gw.state_dir / "cert.pem") == "pairs/current/cert.pem"
    generation = gw.state_dir / "pairs" / os.readlink(gw.state_dir / "pairs/current")
    assert stat.S_IMODE((generation / "key.pem").stat().st_mode) == 0o600
    assert len([p for p in (gw.state_dir / "pairs").iterdir() if p.name.startswith("g-")]) <= 2
    cert = x509.load_pem_x509_certificate((gw.state_dir / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((gw.state_dir / "key.pem").read_bytes(), None)
    assert cert.public_key() == key.public_key()
    assert (gw.state_dir / "cert.pem").read_bytes() != first_cert
    record = registry(plane)["gateways"][gid]
    assert record["renewals"] >= RENEWALS and record["previous"] == []
    assert record["cert_serial"] == format(cert.serial_number, "x")
    # The private keys never left the appliance: none is anywhere in the plane's state or log.
    key_body = (generation / "key.pem").read_text().splitlines()[1]
    for path in [*plane.state_dir.rglob("*"), plane.log_path]:
        if path.is_file():
            assert key_body not in path.read_text(errors="replace"), path
    assert "Identity:     certificate valid until" in screen, screen

    times = gw.renewal_times()
    slowest = max(end - start for start, end, _, _ in calls.results)
    print(f"\n{RENEWALS} renewals with 5 s certificates, {len(calls.results)} calls relayed meanwhile,"
          f" 0 failed (slowest {slowest:.2f} s); tunnels: {len(tunnels)}; renewal (CSR to new pair in use): "
          f"{summary(times)}")  # fmt: skip
