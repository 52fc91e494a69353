"""Support without a console: a bundle through the plane (`mgmtplane support-bundle`) from the
root helper's socket or, without it, built by the gateway; no secret planted in the test's
config survives; and the bundle a gateway offers after a run of failed reconnects."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tarfile
from pathlib import Path

import pytest

from tests.integration import plane_helpers
from tests.integration.operate_support import SupportHelper, operate, wait_until

pytestmark = pytest.mark.timeout(180)

PROXY_PASSWORD = "CANARY-proxy-pw-" + secrets.token_hex(4)
PASSWORD_HASH = "$6$CANARYsalt$" + secrets.token_hex(20)
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nCANARY-private-key\n-----END PRIVATE KEY-----\n"
JOIN_TOKEN = "GWJ1.eyJ1IjoiaHR0cHM6Ly9wbGFuZSJ9CANARY" + secrets.token_hex(8)


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def fetch(op, out: Path, *extra: str) -> str:  # type: ignore[no-untyped-def]
    done = plane_helpers.run(
        "mgmtplane",
        "support-bundle",
        op.gateway_id,
        "-o",
        str(out),
        "--state-dir",
        str(op.plane.state_dir),
        *extra,
    )
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    return done.stdout


def appliance_tree(root: Path, big: str) -> Path:
    """What the root helper reads on an appliance, with secrets where first boot keeps them."""
    files = {
        "etc/os-release": 'NAME="Debian"\nIMAGE_VERSION="9.9.9"\n',
        "etc/gateway/gateway.yaml": f"plane_url: https://plane:8443\nproxy_url: http://bob:{PROXY_PASSWORD}@proxy:3128\n",
        "var/lib/firstboot/state.json": json.dumps(
            {"settings": {"gateway.join_token": JOIN_TOKEN, "admin.password_hash": PASSWORD_HASH}}
        ),
        "var/lib/firstboot/last-error": big,
        "var/lib/gateway/identity.json": '{"gateway_id": "g-1"}',
        "var/lib/gateway/key.pem": KEY_PEM,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_bundle_from_the_root_helper_streams_through_the_plane(tmp_path: Path) -> None:
    # 6 MiB of incompressible text: more than the plane's stream window, so WINDOW credit has to
    # flow back for the bundle to finish.
    big = base64.b64encode(os.urandom(6 * 1024 * 1024 * 3 // 4)).decode()
    tree = appliance_tree(tmp_path / "appliance", big)
    with operate(tmp_path / "op", []) as op:
        helper = SupportHelper(op.root / "support.sock", tree)
        try:
            out = tmp_path / "bundle.tar.gz"
            said = fetch(op, out)
            assert "built by the helper" in said and helper.served == 1
        finally:
            helper.close()
    print(f"\nsupport bundle through the plane: {said.strip()}")
    got = members(out)
    assert got["bundle/var/lib/firstboot/last-error"].decode() == big  # every byte, in order
    everything = b"\n".join(got.values())
    for secret in (PROXY_PASSWORD, PASSWORD_HASH, JOIN_TOKEN[5:], "CANARY-private-key", "CANARY"):
        assert secret.encode() not in everything, secret
    assert not any("key.pem" in name for name in got)
    state = json.loads(got["bundle/var/lib/firstboot/state.json"])
    assert state["settings"] == {"gateway.join_token": "<redacted>", "admin.password_hash": "<redacted>"}
    assert b"http://bob:<redacted>@proxy:3128" in got["bundle/etc/gateway/gateway.yaml"]


def test_without_the_helper_the_gateway_builds_the_bundle_itself(tmp_path: Path) -> None:
    # A comment in gateway.yaml with an old proxy's password: a parsed and re-dumped YAML drops it.
    extra = f"# before the move: proxy_url: http://bob:{PROXY_PASSWORD}@old-proxy:3128\n"
    with operate(tmp_path / "op", [], extra_config=extra) as op:
        op.record_after(0)
        out = tmp_path / "bundle.tar.gz"
        said = fetch(op, out)
        key = (op.root / "gw-state" / "key.pem").read_text()
    assert "built by the gateway" in said
    got = members(out)
    names = set(got)
    assert {"bundle/README.txt", "bundle/health.json", "bundle/journal.txt"} <= names
    assert f"bundle{op.config}" in names and f"bundle{op.status_file}" in names
    assert f"bundle{op.root}/gw-state/identity.json" in names
    assert not any("key.pem" in name for name in names)
    everything = b"\n".join(got.values())
    assert PROXY_PASSWORD.encode() not in everything
    key_body = "".join(line for line in key.splitlines() if not line.startswith("-----"))
    assert key_body[:40].encode() not in everything
    record = json.loads(got["bundle/health.json"])
    assert record["type"] == "health" and record["v"] == 1


def test_a_gateway_back_from_an_outage_offers_a_bundle_and_the_plane_stores_it(tmp_path: Path) -> None:
    with operate(tmp_path / "op", [], extra_config="support_offer_after: 3\n") as op:
        op.record_after(0)
        port = op.plane.port
        op.plane.stop()
        wait_until(lambda: op.status()["attempts"] >= 4, 30, "four failed reconnects")
        op.restart_plane()
        assert op.plane.port == port
        op.wait_connected()
        stored_dir = op.plane.state_dir / "support" / op.gateway_id
        (stored,) = wait_until(
            lambda: sorted(stored_dir.glob("support-*.tar.gz")), 30, "the offered bundle stored"
        )
        assert stored.stat().st_mode & 0o777 == 0o600
        notes = [h for h in op.history() if h["type"] == "support-bundle"]
        assert notes and notes[0]["state"] == "notice" and notes[0]["detail"]["failed_reconnects"] >= 3
        assert "support bundle stored after" in notes[0]["summary"]
        assert "offered a support bundle after" in op.gateway_log()
        copy = tmp_path / "stored.tar.gz"
        said = fetch(op, copy, "--stored")
        assert stored.name in said
        assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(stored.read_bytes()).digest()
        assert "bundle/health.json" in members(copy)


def test_a_bundle_for_a_gateway_that_is_not_connected_is_a_clear_error(tmp_path: Path) -> None:
    with operate(tmp_path / "op", [], start=False) as op:
        done = plane_helpers.run(
            "mgmtplane", "support-bundle", op.gateway_id, "-o", str(tmp_path / "b.tgz"),
            "--state-dir", str(op.plane.state_dir),
        )  # fmt: skip
    assert done.returncode == 1 and not (tmp_path / "b.tgz").exists()
    route = f"/v1/gateways/{op.gateway_id}/support-bundle"
    assert done.stderr.strip() == f"error: {route}: gateway-offline: gateway {op.gateway_id} is not connected"
