"""The update agent against the real plane, on loopback: `mgmtplane serve`, `release add` of a real
signed bundle, `rollout start`; the gateway's own update agent (in process, on a real tunnel with a
real registered identity) downloads it over mTLS from the plane's bundle route and hands it to the
real root helper (`python3 -m updater serve-request` over a unix socket; its install and reboot are
scripts here: there is no A/B disk on the host). After the "reboot", a new agent on the new version
reports healthy, and the plane shows it with the rollout id.

Runs once the plane's releases and rollouts are there (mgmtplane.releases), with RAUC installed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
from yarl import URL

from gateway.tunnel.client import TunnelClient, client_ssl_context
from gateway.update.agent import UpdateAgent
from gateway.update.helper import UpdateHelper
from gwcore.control import ControlChannel
from tests.integration import plane_helpers

from .test_update_agent import _relay
from .update_support import Helper, helper_fixture  # noqa: F401 - the fixture "helper"

pytest.importorskip("mgmtplane.releases", reason="the plane's releases are not in this tree yet")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("rauc") is None, reason="rauc: run 'make setup'"),
    pytest.mark.timeout(180),
]


def _bundle(base: Path) -> tuple[Path, Path]:
    """A real signed bundle of version 0.2.0, and the keyring it verifies against."""
    from appliance.bundle import make_bundle
    from appliance.signing import generate_signer

    signer = generate_signer(base / "vendor", "Vendor")
    tree = base / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/os-release").write_text('IMAGE_VERSION="0.2.0"\n')
    (tree / "payload").write_bytes(os.urandom(512 * 1024))
    rootfs = base / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(rootfs), "16M"], check=True)
    return make_bundle(rootfs, base / "good.raucb", compatible="gateway", version="0.2.0", signer=signer), (
        signer.keyring
    )


def _cli(plane: plane_helpers.Plane, *args: str) -> str:
    done = plane_helpers.run("mgmtplane", *args, "--state-dir", str(plane.state_dir))
    assert done.returncode == 0, done.stderr
    return done.stdout


def _update(plane: plane_helpers.Plane, gateway_id: str) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=str(plane.state_dir / "ca.pem"))
    request = urllib.request.Request(
        f"{plane.url}/v1/gateways/{gateway_id}", headers={"Authorization": f"Bearer {plane.admin_token()}"}
    )
    with urllib.request.urlopen(request, context=ctx, timeout=30) as resp:
        update = json.load(resp).get("update")
    return update if isinstance(update, dict) else {}


async def _plane_sees(
    plane: plane_helpers.Plane, gateway_id: str, state: str, seen: list[str]
) -> dict[str, object]:
    async with asyncio.timeout(60):
        while True:
            update = await asyncio.to_thread(_update, plane, gateway_id)
            step = str(update.get("state"))
            if not seen or seen[-1] != step:
                seen.append(step)
            if step == state:
                return update
            await asyncio.sleep(0.2)


def _agent(
    tmp_path: Path, helper: Helper, gw_state: Path, control: ControlChannel, version: str, slot: str
) -> UpdateAgent:
    (tmp_path / f"os-release-{version}").write_text(f'IMAGE_VERSION="{version}"\n')
    (tmp_path / f"cmdline-{slot}").write_text(f"ro rauc.slot={slot}\n")
    return UpdateAgent(
        control,
        updates_dir=helper.updates,
        helper=UpdateHelper(helper.socket_path),
        ssl_context=lambda: client_ssl_context(gw_state),
        os_release=tmp_path / f"os-release-{version}",
        cmdline=tmp_path / f"cmdline-{slot}",
        trial_poll=0.2,
    )


async def _run(
    plane: plane_helpers.Plane, agent: UpdateAgent, control: ControlChannel, gw_state: Path
) -> tuple[TunnelClient, list[asyncio.Task[None]]]:
    from gateway.tunnel.backoff import Backoff
    from gwcore import protocol as p

    agent.register()
    client = TunnelClient(
        URL(plane.url),
        client_ssl_context(gw_state),
        _relay().on_open,
        limits=p.Limits(heartbeat_ms=1000),
        backoff=Backoff(0.05, 0.5),
        control=control,
        on_state=lambda s, r: agent.on_state(s),
    )
    return client, [asyncio.create_task(client.run()), asyncio.create_task(agent.run())]


async def _stop(
    agent: UpdateAgent, control: ControlChannel, client: TunnelClient, tasks: list[asyncio.Task[None]]
) -> None:
    await agent.close()
    await client.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await control.close()


async def test_a_rollout_of_the_real_plane_reaches_the_agent_and_the_helper(
    tmp_path: Path, helper: Helper
) -> None:
    bundle, keyring = await asyncio.to_thread(_bundle, tmp_path / "bundles")
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    helper.status.write_text(json.dumps({"booted": "A", "version": "0.1.0", "state": {}}))
    with plane_helpers.running_plane(tmp_path / "plane") as plane:
        print(_cli(plane, "release", "add", str(bundle), "--keyring", str(keyring)).strip())
        gw_state = tmp_path / "gw"
        done = plane_helpers.register(plane.token(), gw_state)
        assert done.returncode == 0, done.stderr
        gid = str(json.loads((gw_state / "identity.json").read_text())["gateway_id"])

        control = ControlChannel("gateway")
        agent = _agent(tmp_path, helper, gw_state, control, "0.1.0", "A")
        client, tasks = await _run(plane, agent, control, gw_state)
        seen: list[str] = []
        try:
            await _plane_sees(plane, gid, "idle", seen)
            out = _cli(plane, "rollout", "start", "0.2.0")
            rollout = out.split()[1].rstrip(":")
            rebooting = await _plane_sees(plane, gid, "rebooting", seen)
            assert (rebooting["target"], rebooting["rollout"], rebooting["running"]) == (
                "0.2.0",
                rollout,
                "0.1.0",
            )
            async with asyncio.timeout(10):
                while len(helper.recorded()) < 2:
                    await asyncio.sleep(0.05)
            # The bytes the plane stored, through the helper's path checks, without --allow-downgrade.
            assert helper.recorded() == [[[str(tmp_path / "incoming" / "0.2.0.raucb")], sha], ["reboot"]]
        finally:
            await _stop(agent, control, client, tasks)
        print(f"the plane saw: {' -> '.join(seen)}")
        assert seen[0] == "idle" and seen[-1] == "rebooting"  # the steps between are quick here

        # "Rebooted" into 0.2.0 on slot B, marked good: the new agent reports it on its tunnel.
        last = {"version": "0.2.0", "slot": "B", "result": "installed", "reason": "connected"}
        helper.status.write_text(json.dumps({"booted": "B", "version": "0.2.0", "state": {"last": last}}))
        control = ControlChannel("gateway")
        agent = _agent(tmp_path, helper, gw_state, control, "0.2.0", "B")
        client, tasks = await _run(plane, agent, control, gw_state)
        try:
            healthy = await _plane_sees(plane, gid, "healthy", seen)
            assert (healthy["running"], healthy["slot"], healthy["rollout"]) == ("0.2.0", "B", rollout)
            status = _cli(plane, "rollout", "status")
            print(status)
            assert gid in status and "healthy" in status
        finally:
            await _stop(agent, control, client, tasks)
        await plane_helpers.wait_sockets_closed(plane.port)
