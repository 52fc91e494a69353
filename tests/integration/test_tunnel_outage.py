"""`gateway run` through plane outages and refusals, with `mgmtplane serve`, real TLS and the status file.

An outage, whatever it looks like (refused connections, a balancer closing every connection
before, during or after the TLS handshake), is retried until the plane is back, without a
restart of the gateway. An explicit refusal stops it with exit 78, and says why in the journal
(here: its stderr), in the status file and on the status console.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.daemon import EXIT_REJECTED
from tests.integration import plane_helpers
from tests.integration.outage_support import REFUSALS, gateway_config, read_status, run_outage, start_gateway
from tests.integration.tunnel_support import REPO


def console(root: Path) -> str:
    """`firstboot --root ROOT status --once`: the status console's text, as on tty1."""
    proc = subprocess.run(
        [sys.executable, "-m", "firstboot", "--root", str(root), "status", "--once"],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(180)
async def test_outage_behind_a_closing_balancer_never_stops_the_gateway(tmp_path: Path) -> None:
    screens: dict[str, str] = {}

    async def look(phase: str) -> None:
        screens[phase] = await asyncio.to_thread(console, tmp_path / "root")

    result = await run_outage(tmp_path, refused_s=2.0, closing_s=6.0, base=0.05, cap=0.3, look=look)
    assert result.gateway_alive and len(result.pids) == 1  # one process from start to end
    assert result.refused_phase_attempts >= 3
    # Far more than the three closes after the handshake that used to stop it for good.
    assert result.closing_phase_attempts >= 12
    assert all(result.front_refused[mode] >= 3 for mode in REFUSALS), result.front_refused

    reports = [s.report for s in result.samples]
    phases = [(r["state"], r.get("last_error") or "") for r in reports]
    assert phases[0][0] in ("connecting", "connected")
    assert any(
        state == "backoff" and "cannot connect to 127.0.0.1" in error and "refused" in error.lower()
        for state, error in phases
    ), phases
    # A run of closes right after the handshake, far longer than the three that stopped it before.
    assert any(state == "backoff" and "without answering (6 in a row)" in error for state, error in phases), (
        phases
    )
    assert all(r["state"] != "rejected" and r.get("stop_reason") is None for r in reports)
    # While down, `since` stays at the start of the outage instead of following every attempt.
    down = [r for r in reports if r["state"] in ("connecting", "backoff")]
    assert len({r["since"] for r in down}) <= 2, {r["since"] for r in down}  # the outage (and start-up)
    final = result.final
    assert final["state"] == "connected" and final["connects"] == 2 and final["attempts"] == 0
    assert final["last_error"] is None and final["schema"] == 1 and final["pid"] in result.pids

    # The status console on tty1 follows each phase.
    assert "Tunnel:       connected since " in screens["up"] and "(connection 1)" in screens["up"]
    for phase in ("refused", "closing"):
        assert "Tunnel:       down since " in screens[phase] and "failed attempts" in screens[phase]
        assert "Last error:   none" not in screens[phase]
    assert "Last error:   cannot connect to 127.0.0.1" in screens["refused"]
    assert f"Plane:        {final['plane_url']}" in screens["back"]
    assert "Tunnel:       connected since " in screens["back"] and "(connection 2)" in screens["back"]
    assert "Last error:   none" in screens["back"]


def registered_gateway(tmp_path: Path) -> Iterator[tuple[plane_helpers.Plane, Path, Path]]:
    """A real plane, a gateway registered with it, and the --root its status file sits under."""
    with plane_helpers.running_plane(tmp_path / "plane") as plane:
        state_dir = tmp_path / "gw-state"
        reg = plane_helpers.register(plane.token(), state_dir)
        assert reg.returncode == 0, reg.stderr
        yield plane, state_dir, tmp_path / "root"


@pytest.fixture
def registered(tmp_path: Path) -> Iterator[tuple[plane_helpers.Plane, Path, Path]]:
    yield from registered_gateway(tmp_path)


async def run_until_exit(plane_url: str, state_dir: Path, root: Path, tmp_path: Path) -> tuple[int, str]:
    """`gateway run` until it exits by itself; (exit code, its log)."""
    status = root / "run/gateway/status.json"
    config = gateway_config(tmp_path / "gateway.yaml", plane_url, state_dir, status, base=0.05, cap=0.3,
                            heartbeat=1)  # fmt: skip
    log = tmp_path / "gateway.log"
    proc = start_gateway(config, log)
    try:
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log.read_text()


def assert_stopped(code: int, log: str, root: Path, says: str) -> dict[str, Any]:
    assert code == EXIT_REJECTED, log
    report = read_status(root / "run/gateway/status.json")
    assert report["state"] == "rejected", report
    assert says in report["stop_reason"] and report["action"], report
    assert report["attempts"] == 1  # the first refusal was enough: an explicit signal, not a count
    assert says in log and "exiting with 78" in log
    screen = console(root)
    assert f"Tunnel:       STOPPED: {report['stop_reason']}" in screen, screen
    assert f"What to do: {report['action']}" in screen, screen
    return report


async def test_a_gateway_the_plane_no_longer_knows_gets_403_and_stops(registered, tmp_path: Path) -> None:
    plane, state_dir, root = registered
    gateway_id = json.loads((state_dir / "identity.json").read_text())["gateway_id"]
    # The plane's registry loses the gateway (removed, or restored from before it registered).
    registry = plane.state_dir / "gateways.json"
    data = json.loads(registry.read_text())
    del data["gateways"][gateway_id]
    registry.write_text(json.dumps(data))
    code, log = await run_until_exit(plane.url, state_dir, root, tmp_path)
    report = assert_stopped(code, log, root, "HTTP 403 gateway-unknown")
    assert gateway_id in report["stop_reason"] and "re-register" in report["action"]


async def test_a_certificate_from_another_ca_gets_unknown_ca_and_stops(registered, tmp_path: Path) -> None:
    plane, state_dir, root = registered
    gateway_id = json.loads((state_dir / "identity.json").read_text())["gateway_id"]
    rogue = trustme.CA().issue_cert(common_name=gateway_id)  # right name, wrong issuer
    rogue.private_key_pem.write_to_path(str(state_dir / "key.pem"))
    rogue.cert_chain_pems[0].write_to_path(str(state_dir / "cert.pem"))
    code, log = await run_until_exit(plane.url, state_dir, root, tmp_path)
    assert_stopped(code, log, root, "TLS alert unknown_ca")
    assert "tunnel up" not in (plane.log_path.read_text())


async def test_a_changed_plane_ca_fails_the_pin_and_stops(registered, tmp_path: Path) -> None:
    plane, state_dir, root = registered
    trustme.CA().cert_pem.write_to_path(str(state_dir / "ca.pem"))
    code, log = await run_until_exit(plane.url, state_dir, root, tmp_path)
    report = assert_stopped(code, log, root, "does not verify against the CA pinned at registration")
    assert "intercepts TLS" in report["action"]
