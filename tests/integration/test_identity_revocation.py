"""Revocation and deletion with `mgmtplane serve` and `gateway run`.

`mgmtplane gateway revoke ID` / `delete ID`: the running plane closes the live tunnel within a
second (a `revoked` notice first), the gateway stops for good (exit 78) and says "revoked by the
plane" in its status file and on the console; the hub refuses the certificate from then on; the
console's menu enrols the appliance again with a new token, without a redeploy.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.daemon import EXIT_REJECTED
from tests.integration import plane_helpers
from tests.integration.identity_support import (
    Appliance,
    caller,
    console,
    mgmtplane,
    reenrol_from_console,
    registry,
)
from tests.integration.tunnel_support import running_target

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[plane_helpers.Plane]:
    with plane_helpers.running_plane(tmp_path / "plane") as running:
        yield running


@pytest.fixture
async def target_url() -> AsyncIterator[str]:
    async with running_target() as url:
        yield str(url)


async def connected(plane: plane_helpers.Plane, target_url: str, root: Path, name: str) -> Appliance:
    gw = Appliance(root, name, target_url)
    gw.register(plane.token())
    gw.start()
    await gw.wait_status(lambda r: r.get("state") == "connected", 30)
    return gw


async def test_revoke_closes_the_live_tunnel_and_the_console_enrols_again(
    plane: plane_helpers.Plane, target_url: str, tmp_path: Path
) -> None:
    gw = await connected(plane, target_url, tmp_path / "root", "gw-revoked")
    gid = gw.gateway_id
    try:
        done = mgmtplane(plane.state_dir, "gateway", "revoke", gid)
        assert done.returncode == 0, done.stderr
        revoked = time.monotonic()
        assert f"mgmtplane token create --gateway {gid}" in done.stdout
        assert await gw.wait_exit(15) == EXIT_REJECTED
        took = time.monotonic() - revoked
    finally:
        await gw.stop()
    report = gw.status()
    assert report["state"] == "rejected" and report["stop_code"] == "revoked", report
    assert report["identity"] == "revoked"
    assert report["stop_reason"].startswith("revoked by the plane"), report
    assert f"--gateway {gid}" in report["action"]
    # The notice over the tunnel stopped it: not one reconnect attempt.
    assert report["attempts"] == 0 and "tunnel: attempt" not in gw.log.read_text(), report
    screen = console(gw.root)
    assert "Tunnel:       STOPPED: revoked by the plane" in screen, screen
    assert "Identity:     REVOKED by the plane" in screen, screen
    assert registry(plane)["gateways"][gid]["state"] == "revoked"

    # The hub refuses the revoked certificate at once: one attempt, a 403, the same stop.
    gw.start()
    assert await gw.wait_exit(30) == EXIT_REJECTED
    again = gw.status()
    assert again["attempts"] == 1 and "HTTP 403 gateway-revoked" in again["stop_reason"], again
    assert again["stop_reason"].startswith("revoked by the plane")

    # The console's menu enrols it again with a token made for its id: same id, tunnel back.
    token = mgmtplane(plane.state_dir, "token", "create", "--gateway", gid)
    assert token.returncode == 0, token.stderr
    said = reenrol_from_console(gw.root, token.stdout.strip())
    assert said == f"Registered as gateway {gid} (the same gateway id as before)", said
    assert registry(plane)["gateways"][gid]["state"] == "active"
    gw.start()
    try:
        report = await gw.wait_status(lambda r: r.get("state") == "connected", 30)
        assert report["identity"] == "valid"
        async with caller(plane) as calls:
            await calls.until_up(gid)
    finally:
        await gw.stop()
    print(f"\nrevoke: the gateway stopped {took:.2f} s after 'mgmtplane gateway revoke' returned")


async def test_delete_closes_the_tunnel_and_the_id_is_gone(
    plane: plane_helpers.Plane, target_url: str, tmp_path: Path
) -> None:
    gw = await connected(plane, target_url, tmp_path / "root", "gw-deleted")
    gid = gw.gateway_id
    try:
        done = mgmtplane(plane.state_dir, "gateway", "delete", gid)
        assert done.returncode == 0, done.stderr
        assert await gw.wait_exit(15) == EXIT_REJECTED
    finally:
        await gw.stop()
    report = gw.status()
    assert report["stop_reason"].startswith("revoked by the plane: the gateway was deleted"), report
    assert report["identity"] == "revoked"
    assert gid not in registry(plane)["gateways"] and gid in registry(plane)["deleted"]
    refused = mgmtplane(plane.state_dir, "token", "create", "--gateway", gid)
    assert refused.returncode == 1 and f"no registered gateway {gid}" in refused.stderr
    assert mgmtplane(plane.state_dir, "gateway", "delete", gid).returncode == 1

    gw.start()  # the hub knows it was deleted, and says so
    assert await gw.wait_exit(30) == EXIT_REJECTED
    assert "HTTP 403 gateway-deleted" in gw.status()["stop_reason"]

    said = reenrol_from_console(gw.root, plane.token())  # a fresh token: a new gateway id
    assert said.startswith("Registered as gateway ") and gid not in said, said
    gw.start()
    try:
        await gw.wait_status(lambda r: r.get("state") == "connected", 30)
    finally:
        await gw.stop()


async def test_the_admin_api_revokes_one_gateway_and_leaves_the_other(
    plane: plane_helpers.Plane, target_url: str, tmp_path: Path
) -> None:
    one = await connected(plane, target_url, tmp_path / "one", "gw-one")
    two = await connected(plane, target_url, tmp_path / "two", "gw-two")
    try:
        ctx = ssl.create_default_context(cafile=str(plane.state_dir / "ca.pem"))
        auth = {"Authorization": f"Bearer {plane.admin_token()}"}
        async with aiohttp.ClientSession() as http:
            url = f"{plane.url}/v1/gateways/{one.gateway_id}/revoke"
            async with http.post(url, ssl=ctx) as r:
                assert r.status == 401  # admin only
            async with http.post(url, ssl=ctx, headers=auth) as r:
                body = await r.json()
            assert r.status == 200 and body["state"] == "revoked" and body["tunnel_closed"] is True, body
            async with http.post(f"{plane.url}/v1/gateways/nope/revoke", ssl=ctx, headers=auth) as r:
                assert r.status == 404 and (await r.json())["error"] == "gateway-unknown"
        assert await one.wait_exit(15) == EXIT_REJECTED
        async with caller(plane) as calls:
            await calls.until_up(two.gateway_id)  # the other gateway never noticed
            status, _ = await calls.call(one.gateway_id, "/small")
            assert status == 503
        assert two.status()["connects"] == 1 and two.proc is not None and two.proc.poll() is None
        assert registry(plane)["gateways"][two.gateway_id]["state"] == "active"
    finally:
        await one.stop()
        await two.stop()
