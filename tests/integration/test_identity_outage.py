"""Back from an outage longer than the certificate's life: refused as expired, not bricked.

The appliance was off while its certificate expired. `gateway run` hears the plane's
certificate_expired alert, stops (exit 78) and says so; the console offers re-enrolment, and a
token made for its id (`mgmtplane token create --gateway ID`) gives it back the same id, its
registration time and its place in the plane's inventory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from gateway.daemon import EXIT_REJECTED
from tests.integration import plane_helpers
from tests.integration.identity_support import (
    Appliance,
    caller,
    console,
    mgmtplane,
    reenrol_from_console,
    registry,
    set_lifetime,
)
from tests.integration.tunnel_support import running_target

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def target_url() -> AsyncIterator[str]:
    async with running_target() as url:
        yield str(url)


async def test_an_expired_certificate_is_refused_and_the_console_enrols_the_same_id(
    target_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "plane"
    state.mkdir(mode=0o700)
    set_lifetime(state, "3s")
    with plane_helpers.running_plane(state) as plane:
        gw = Appliance(tmp_path / "root", "gw-outage", target_url)
        gw.register(plane.token())
        gid = gw.gateway_id
        registered = registry(plane)["gateways"][gid]
        cert = x509.load_pem_x509_certificate((gw.state_dir / "cert.pem").read_bytes())
        # Powered off past the end of its certificate.
        await asyncio.sleep(max(0.0, cert.not_valid_after_utc.timestamp() - time.time()) + 1.0)
        set_lifetime(state, "90d")  # the plane's normal lifetime again, for what it signs next

        gw.start()
        assert await gw.wait_exit(30) == EXIT_REJECTED
        report = gw.status()
        assert report["stop_code"] == "expired" and report["identity"] == "expired", report
        assert "TLS alert certificate_expired" in report["stop_reason"]
        assert "mgmtplane token create --gateway ID" in report["action"]
        assert report["attempts"] == 1  # one refusal is enough: an explicit signal
        screen = console(gw.root)
        assert "Identity:     EXPIRED: the certificate ran out on" in screen, screen
        assert "What to do: re-enrol the gateway with a new join token" in screen, screen

        token = mgmtplane(plane.state_dir, "token", "create", "--gateway", gid)
        assert token.returncode == 0, token.stderr
        listed = mgmtplane(plane.state_dir, "token", "list")
        assert "valid     expires" in listed.stdout and f"for {gid}" in listed.stdout, listed.stdout
        said = reenrol_from_console(gw.root, token.stdout.strip())
        assert said == f"Registered as gateway {gid} (the same gateway id as before)", said
        record = registry(plane)["gateways"][gid]
        assert record["registered_at"] == registered["registered_at"]
        assert record["cert_fingerprint"] != registered["cert_fingerprint"]
        # A token made for one gateway is used up like any other.
        again = reenrol_from_console(gw.root, token.stdout.strip())
        assert again.startswith("FAILED: ") and "already used" in again, again

        gw.start()
        try:
            report = await gw.wait_status(lambda r: r.get("state") == "connected", 30)
            assert report["identity"] == "valid" and report["cert_not_after"] > time.time() + 80 * 86400
            async with caller(plane) as calls:
                await calls.until_up(gid)
        finally:
            await gw.stop()
