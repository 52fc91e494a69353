"""`firstboot register` against a real `mgmtplane serve` subprocess, over real TLS on loopback."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from firstboot.register.client import load_identity
from firstboot.register.client import register as register_identity
from gwcore.enrol import encode_token, parse_token
from gwcore.pki import spki_sha256
from mgmtplane.registry import Registry
from tests.integration.plane_helpers import Plane, free_port, register, run, running_plane


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path / "plane") as running:
        yield running


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_register_end_to_end(plane: Plane, tmp_path: Path) -> None:
    token = plane.token()
    gw = tmp_path / "gw"
    gw.mkdir(mode=0o755)  # e.g. made by a package: tightened to 0700
    result = register(token, gw, "--hostname", "gw-one")
    assert result.returncode == 0, result.stderr
    identity = json.loads((gw / "identity.json").read_text())
    assert identity["plane_url"] == plane.url
    assert set(identity) == {"gateway_id", "plane_url", "registered_at"}
    assert f"registered as gateway {identity['gateway_id']}" in result.stdout
    assert _mode(gw) == 0o700 and _mode(gw / "key.pem") == 0o600

    key = serialization.load_pem_private_key((gw / "key.pem").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((gw / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((gw / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity["gateway_id"]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert spki_sha256(ca) == parse_token(token).ca_hash
    assert ca == x509.load_pem_x509_certificate((plane.state_dir / "ca.pem").read_bytes())

    listed = run("mgmtplane", "gateways", "--state-dir", str(plane.state_dir))
    assert identity["gateway_id"] in listed.stdout and "gw-one" in listed.stdout
    assert not list(gw.glob(".*.tmp"))


def test_idempotent_unless_forced(plane: Plane, tmp_path: Path) -> None:
    gw = tmp_path / "gw"
    assert register(plane.token(), gw).returncode == 0
    first = load_identity(gw)
    assert first is not None
    key_before = (gw / "key.pem").read_bytes()

    unused = plane.token()
    again = register(unused, gw)
    assert again.returncode == 0 and "already registered" in again.stdout
    assert load_identity(gw) == first
    # The plane was not asked: the token is still good for another gateway.
    assert register(unused, tmp_path / "other").returncode == 0

    forced = register(plane.token(), gw, "--force")
    assert forced.returncode == 0, forced.stderr
    second = load_identity(gw)
    assert second is not None and second.gateway_id != first.gateway_id
    assert (gw / "key.pem").read_bytes() != key_before


def test_reused_token_refused(plane: Plane, tmp_path: Path) -> None:
    token = plane.token()
    assert register(token, tmp_path / "a").returncode == 0
    reuse = register(token, tmp_path / "b")
    assert reuse.returncode == 1
    assert reuse.stderr.strip() == (
        "error: join token was already used; create a new one with 'mgmtplane token create'"
    )
    assert not (tmp_path / "b" / "identity.json").exists()


def test_expired_token_refused(plane: Plane, tmp_path: Path) -> None:
    token = plane.token(ttl="1s")
    time.sleep(max(0.0, parse_token(token).expires_at - time.time()) + 0.2)
    result = register(token, tmp_path / "gw")
    assert result.returncode == 1
    assert "join token has expired" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "gw" / "identity.json").exists()


def test_unknown_token_refused(plane: Plane, tmp_path: Path) -> None:
    real = parse_token(plane.token())
    forged = encode_token(real.plane_url, real.ca_hash, "made-up-secret", real.expires_at)
    result = register(forged, tmp_path / "gw")
    assert result.returncode == 1 and "unknown to the plane" in result.stderr


def test_ca_hash_mismatch_is_interception(plane: Plane, tmp_path: Path) -> None:
    with running_plane(tmp_path / "evil") as evil:
        real = parse_token(plane.token())
        # The attacker's plane answers at the URL; the token still pins the real CA.
        hijacked = encode_token(evil.url, real.ca_hash, real.secret, real.expires_at)
        result = register(hijacked, tmp_path / "gw")
    assert result.returncode == 1
    assert "possible interception" in result.stderr and "CA hash mismatch" in result.stderr
    assert not (tmp_path / "gw" / "key.pem").exists()
    # The secret never reached the impostor, so the real plane still accepts the token.
    assert register(plane.token(), tmp_path / "gw2").returncode == 0


def test_plane_unreachable(tmp_path: Path) -> None:
    token = encode_token(f"https://127.0.0.1:{free_port()}", "sha256:" + "0" * 64, "s", int(time.time()) + 60)
    result = register(token, tmp_path / "gw", "--timeout", "5")
    assert result.returncode == 1
    assert "plane unreachable at https://127.0.0.1:" in result.stderr and "Traceback" not in result.stderr


def test_bad_token_text_one_line(tmp_path: Path) -> None:
    result = register("GWJ1.garbage!", tmp_path / "gw")
    assert result.returncode == 1
    assert result.stderr.startswith("error: join token:") and result.stderr.count("\n") == 1


def test_restart_keeps_ca_tokens_and_gateways(tmp_path: Path) -> None:
    state = tmp_path / "plane"
    listen = f"127.0.0.1:{free_port()}"
    with running_plane(state, listen=listen) as first:
        used = first.token()
        spare = first.token()
        assert register(used, tmp_path / "gw1").returncode == 0
        ca_before = (state / "ca.pem").read_bytes()
        admin = first.admin_token()
        assert first.stop() == 0  # SIGTERM is a clean shutdown
        assert "shutting down" in first.log_path.read_text()
    with running_plane(state, listen=listen) as second:
        assert (state / "ca.pem").read_bytes() == ca_before
        assert second.admin_token() == admin
        refused = register(used, tmp_path / "gw3")
        assert refused.returncode == 1 and "already used" in refused.stderr
        assert register(spare, tmp_path / "gw2").returncode == 0
        listed = run("mgmtplane", "gateways", "--state-dir", str(state)).stdout
    for gw in ("gw1", "gw2"):
        identity = load_identity(tmp_path / gw)
        assert identity is not None and identity.gateway_id in listed


def test_interrupted_registration_finishes_with_same_token(plane: Plane, tmp_path: Path) -> None:
    """A power cut after the plane signed, before the cert was stored: the next boot finishes the job."""
    token = plane.token()
    gw = tmp_path / "gw"
    assert register(token, gw).returncode == 0
    gateway_id = json.loads((gw / "identity.json").read_text())["gateway_id"]
    for name in ("cert.pem", "ca.pem", "identity.json"):
        (gw / name).unlink()  # only key.pem survived
    before = Registry(plane.state_dir).all()
    retry = register(token, gw)
    assert retry.returncode == 0, retry.stderr
    identity = load_identity(gw)
    assert identity is not None and identity.gateway_id == gateway_id
    after = Registry(plane.state_dir).all()
    assert [r.gateway_id for r in after] == [gateway_id]
    assert after[0].registered_at == before[0].registered_at
    assert after[0].cert_serial != before[0].cert_serial  # a fresh certificate for the same key


def test_library_enrols_again_only_for_another_plane(plane: Plane, tmp_path: Path) -> None:
    gw = tmp_path / "gw"
    assert register(plane.token(), gw).returncode == 0
    first = load_identity(gw)
    assert first is not None
    key_before = (gw / "key.pem").read_bytes()
    with running_plane(tmp_path / "other") as other:
        moved = register_identity(other.token(), gw, hostname="gw", timeout=10)
        spare = other.token()
    assert moved.plane_url == other.url and moved.gateway_id != first.gateway_id
    assert (gw / "key.pem").read_bytes() != key_before  # a new plane gets a new key
    # Same plane again: the stored identity is returned without contacting it (it is stopped now).
    assert register_identity(spare, gw, hostname="gw", timeout=5) == moved
