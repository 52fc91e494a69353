"""Health as metadata, end to end on loopback: `gateway run` probes real targets (a TLS BMC with a
trustme certificate, a Keystone version document, vcsim, a closed port), the real plane checks and
keeps every record, `mgmtplane gateways` shows it, and the status console shows the same facts."""

from __future__ import annotations

import hashlib
import json
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gateway.filter.policy import SHIPPED_POLICIES, policy_files
from gateway.health.record import encoded_size, policy_hash
from tests.integration import plane_helpers
from tests.integration.operate_support import (
    KEYSTONE_V3,
    REDFISH_ROOT,
    JsonServer,
    TargetSpec,
    free_port,
    operate,
    tls_context,
    wait_until,
)
from tests.integration.sdk_support import tool

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def vcsim() -> Iterator[int]:
    port = free_port()
    cmd = [str(tool("vcsim")), f"-l=127.0.0.1:{port}", "-tls=false", "-stdinexit"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    assert f"127.0.0.1:{port}/sdk" in line, f"vcsim did not start: {line!r}"
    try:
        yield port
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def relay(op, target: str, path: str) -> int:  # type: ignore[no-untyped-def]
    status, _body = op.get(f"/v1/gateways/{op.gateway_id}/targets/{target}{path}")
    return int(status)


def test_a_health_record_arrives_with_every_field_and_real_probes(tmp_path: Path, vcsim: int) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "bmc-ca.pem"))
    bmc_tls, bmc_der = tls_context(ca)
    bmc = JsonServer({"/redfish/v1": REDFISH_ROOT}, tls=bmc_tls)
    keystone = JsonServer({"/v3": KEYSTONE_V3})
    closed = free_port()
    targets = [
        TargetSpec(
            "bmc", f"https://127.0.0.1:{bmc.port}", "redfish", {"ca_file": str(tmp_path / "bmc-ca.pem")}
        ),
        TargetSpec("keystone", f"http://127.0.0.1:{keystone.port}", "openstack-keystone"),
        TargetSpec("vc", f"http://127.0.0.1:{vcsim}", "vsphere-soap"),
        TargetSpec("gone", f"http://127.0.0.1:{closed}", "redfish"),
    ]
    try:
        with operate(tmp_path / "op", targets) as op:
            # Filter decisions to count: one allowed (version discovery), one denied (credentials).
            assert relay(op, "keystone", "/v3") == 200
            assert relay(op, "keystone", "/v3/credentials") == 403
            first = op.record_after(0)
            rec = op.record_after(first["seq"])  # a record made after both calls
            health = op.health()
            print(f"\nhealth record: {encoded_size(rec)} bytes with {len(rec['targets'])} targets")

            assert health["connected"] is True and health["stale"] is False and health["age_s"] < 10
            assert rec["v"] == 1 and rec["interval"] == 2.0
            app = rec["appliance"]
            assert app["slot"] == "unknown" and app["package_version"] and app["image_version"]
            assert app["uptime_s"] > 0 and app["daemon_uptime_s"] > 0
            assert 89 < (rec["certificate"]["not_after"] - time.time()) / 86400 < 91  # default lifetime
            assert abs(rec["clock"]["plane_offset_s"]) < 1.0 and rec["clock"]["problem"] is None
            system = rec["system"]
            for key in ("load1", "cpu_percent", "mem_total", "mem_available", "var_percent", "gateway_rss"):
                assert system[key] is not None and system[key] >= 0, key
            tunnel = rec["tunnel"]
            assert tunnel["connects"] == 1 and tunnel["relayed"] >= 2 and tunnel["rtt_ms"] > 0
            filt = rec["filter"]
            assert filt["policy_hash"] == policy_hash(policy_files([SHIPPED_POLICIES]))
            assert filt["policies"]["openstack-keystone"]["allowed"] >= 1
            assert filt["policies"]["openstack-keystone"]["denied"] >= 1
            assert filt["allowed"] >= 1 and filt["denied"] >= 1

            by_name = {t["name"]: t for t in rec["targets"]}
            b = by_name["bmc"]
            assert b["state"] == "up" and b["http_status"] == 200 and b["error"] is None
            assert set(b["latency_ms"]) == {"tcp", "tls", "http", "total"}
            # Only version fields of what the filter lets out: no UUID, no OEM secret.
            assert b["version"] == {"RedfishVersion": "1.6.0", "Product": "Test BMC", "Vendor": "Acme"}
            assert b["tls"]["trusted"] is True and b["tls"]["fingerprint"] == fingerprint(bmc_der)
            assert b["tls"]["not_after"] > time.time() + 86400
            assert by_name["keystone"]["state"] == "up"
            assert by_name["keystone"]["version"] == {"version.id": "v3.14", "version.status": "stable"}
            assert by_name["vc"]["state"] == "up" and by_name["vc"]["version"] == {"urn:vim25": "6.5"}
            gone = by_name["gone"]
            assert gone["state"] == "down" and gone["error"].startswith("refused")
            assert "CANARY" not in json.dumps(health)
            assert [h for h in bmc.hits if h != "/redfish/v1"] == []  # the probe asked for nothing else

            # The plane judges: the closed port is down after two records.
            wait_until(lambda: "target-down:gone" in op.health()["summary"]["conditions"], 20, "target-down")
            listing = plane_helpers.run("mgmtplane", "gateways", "--state-dir", str(op.plane.state_dir))
            assert listing.returncode == 0, listing.stderr
            header, line = listing.stdout.splitlines()
            assert header.split()[:6] == ["GATEWAY", "HOSTNAME", "TUNNEL", "HEALTH", "TARGETS", "CERT"]
            cols = line.split()
            assert cols[:6] == [op.gateway_id, "gw-operate", "up", "degraded", "3/4", "90d"]
            assert cols[-1] == "target-down:gone"

            # The tty1 console shows the same facts, read from the file the daemon wrote.
            console = console_once(tmp_path, op.status_file)
            assert "Targets:      4: 3 up; 1 not (gone: down (refused))" in console
            assert "Clock:        ok (" in console and "s from the plane" in console
            # The certificate is the identity room's line (its renewal too), not repeated.
            assert "Identity:     certificate valid until" in console and "renews from" in console
            assert "Certificate:" not in console
            assert "System:       load " in console and "/var " in console
            assert f"Filter:       {op.status()['filter_allowed']} allowed" in console
            assert "Health:       last taken by the plane" in console
    finally:
        bmc.stop()
        keystone.stop()


def console_once(tmp_path: Path, status_file: Path, env: dict[str, str] | None = None) -> str:
    """`firstboot --root R status --once` over a tree holding the daemon's status file."""
    root = tmp_path / "console-root"
    (root / "run/gateway").mkdir(parents=True, exist_ok=True)
    shutil.copy(status_file, root / "run/gateway/status.json")
    done = subprocess.run(
        [sys.executable, "-m", "firstboot", "--root", str(root), "status", "--once"],
        env={**plane_helpers._env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def fingerprint(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()
