"""The plane's identity lifecycle, its pure and on-disk parts: admission, the renewal rate limit,
registry records old and new, tombstones, tokens for an existing gateway, the CA rollover's phases
(and every crash point of its last step), and the lifetime setting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gwcore import identity as idm
from mgmtplane import rollover
from mgmtplane.ca import load_ca_files, write_ca
from mgmtplane.errors import PlaneError
from mgmtplane.identity import RateLimiter, admission, revoke
from mgmtplane.registry import REVOKED, GatewayRecord, Registry
from mgmtplane.settings import (
    DEFAULT_CERT_LIFETIME,
    PlaneSettings,
    format_duration,
    load_settings,
    parse_duration,
    save_settings,
)
from mgmtplane.tokens import TokenStore

FP0, FP1, FP2 = ("sha256:" + c * 64 for c in "012")


def record(**changes: object) -> GatewayRecord:
    base = GatewayRecord("g1", "gw-1", "2026-01-01T00:00:00+00:00", "a1", FP1, "tok", key_hash="sha256:k")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rec", "deleted", "fingerprint", "code"),
    [
        (record(), False, FP1, None),  # the current certificate
        (record(previous=(FP0,)), False, FP0, None),  # the one it renews from, during the overlap
        (record(), False, FP0, idm.CERTIFICATE_SUPERSEDED),  # an older one, the overlap over
        (record(previous=(FP0,)), False, FP2, idm.CERTIFICATE_SUPERSEDED),
        (record(state=REVOKED, revoked_at="2026-02-01T00:00:00+00:00"), False, FP1, idm.GATEWAY_REVOKED),
        (record(state=REVOKED, previous=(FP0,)), False, FP0, idm.GATEWAY_REVOKED),
        (None, True, FP1, idm.GATEWAY_DELETED),
        (None, False, FP1, idm.GATEWAY_UNKNOWN),
    ],
)
def test_admission(rec: GatewayRecord | None, deleted: bool, fingerprint: str, code: str | None) -> None:
    verdict = admission("g1", rec, deleted, fingerprint)
    assert (verdict[0] if verdict else None) == code
    if verdict is not None:
        assert verdict[1] and "\n" not in verdict[1]


def test_the_renewal_rate_limit_is_a_burst_then_a_quarter_lifetime_each() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("g1", 100.0) for _ in range(5)] == [True] * 4 + [False]
    assert limiter.take("g2", 100.0)  # per gateway
    now[0] = 24.0
    assert not limiter.take("g1", 100.0)  # a token comes back after 25 s
    now[0] = 26.0
    assert limiter.take("g1", 100.0) and not limiter.take("g1", 100.0)
    now[0] = 10_000.0
    assert [limiter.take("g1", 100.0) for _ in range(5)] == [True] * 4 + [False]  # the burst, not more


def test_a_record_from_before_the_lifecycle_reads_with_defaults(tmp_path: Path) -> None:
    old = {
        "gateway_id": "g1",
        "hostname": "h",
        "registered_at": "t",
        "cert_serial": "a",
        "cert_fingerprint": FP1,
    }
    (tmp_path / "gateways.json").write_text(json.dumps({"gateways": {"g1": old}}))
    got = Registry(tmp_path).get("g1")
    assert got == GatewayRecord("g1", "h", "t", "a", FP1)
    assert got.state == "active" and got.previous == () and got.renewals == 0


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("previous", "sha256:x", "previous: expected a list"), ("renewals", -1, "renewals: expected a count")],
)
def test_a_bad_record_field_is_one_line(tmp_path: Path, field: str, value: object, says: str) -> None:
    raw = {**record().to_json(), field: value}
    (tmp_path / "gateways.json").write_text(json.dumps({"gateways": {"g1": raw}}))
    with pytest.raises(PlaneError, match=f"gateways.json: gateways.g1: {says}"):
        Registry(tmp_path).all()


def test_revoke_update_and_delete_leave_a_tombstone(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.add(record(previous=(FP0,), cert_not_after="2099-01-01T00:00:00+00:00"))
    revoked = revoke(registry, "g1")
    assert revoked is not None and revoked.state == REVOKED and revoked.revoked_at and revoked.previous == ()
    assert revoke(registry, "g1") == revoked  # again: no change, the first time stays
    assert registry.update("nope", lambda r: r) is None and revoke(registry, "nope") is None
    assert registry.remove("g1") == revoked
    assert registry.get("g1") is None and registry.all() == [] and registry.was_deleted("g1")
    assert registry.remove("g1") is None
    data = json.loads((tmp_path / "gateways.json").read_text())
    assert data["deleted"]["g1"]["until"] == "2099-01-01T00:00:00+00:00"
    registry.add(record(gateway_id="g2"))  # the tombstone survives other writes
    assert registry.was_deleted("g1") and not registry.was_deleted("g2")


def test_an_expired_tombstone_goes_at_the_next_write(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.add(record())
    registry.remove("g1")
    data = json.loads((tmp_path / "gateways.json").read_text())
    data["deleted"]["g1"]["until"] = "2000-01-01T00:00:00+00:00"
    (tmp_path / "gateways.json").write_text(json.dumps(data))
    assert not registry.was_deleted("g1")
    registry.add(record(gateway_id="g2"))
    assert "deleted" not in json.loads((tmp_path / "gateways.json").read_text())


def test_a_token_for_an_existing_gateway_enrols_that_id(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    secret, _ = store.create(3600, for_gateway="g1")
    peeked = store.peek(secret)
    assert peeked is not None and peeked.for_gateway == "g1" and peeked.used_at is None
    first = store.redeem(secret, "sha256:key", "fresh-uuid")
    assert first.gateway_id == "g1" and not first.replay
    assert store.redeem(secret, "sha256:key", "other-uuid").gateway_id == "g1"  # the same key resumes
    assert store.peek("unknown") is None


def roles(cas: rollover.CASet) -> tuple[str, str, str, list[str], int]:
    """(phase, server, signing, trusted, proofs) by CA hash prefix."""
    return (cas.phase, cas.server.spki_hash[:16], cas.signing.spki_hash[:16],
            [c.spki_hash[:16] for c in cas.trusted], len(cas.proofs))  # fmt: skip


def test_the_rollover_phases_and_their_roles(tmp_path: Path) -> None:
    start = rollover.load_ca_set(tmp_path)
    old = start.server.spki_hash[:16]
    assert roles(start) == ("none", old, old, [old], 0)
    with pytest.raises(PlaneError, match="reissue needs phase added"):
        rollover.reissue(tmp_path)
    added = rollover.start(tmp_path)
    new = added.trusted[1].spki_hash[:16]
    assert new != old and roles(added) == ("added", old, old, [old, new], 1)
    assert added.bundle_pem == added.trusted[0].cert_pem + added.trusted[1].cert_pem
    with pytest.raises(PlaneError, match="already in phase added"):
        rollover.start(tmp_path)
    assert roles(rollover.reissue(tmp_path)) == ("reissue", old, new, [old, new], 1)
    with pytest.raises(PlaneError, match="cancel works in phase added only"):
        rollover.cancel(tmp_path)
    assert roles(rollover.retire(tmp_path)) == ("none", new, new, [new], 0)
    assert sorted(p.name for p in tmp_path.glob("ca*")) == ["ca-key.pem", "ca.pem"]
    assert roles(rollover.load_ca_set(tmp_path)) == ("none", new, new, [new], 0)


def test_cancel_undoes_start(tmp_path: Path) -> None:
    old = rollover.load_ca_set(tmp_path).server
    rollover.start(tmp_path)
    after = rollover.cancel(tmp_path)
    assert after.phase == "none" and after.server.spki_hash == old.spki_hash
    assert sorted(p.name for p in tmp_path.glob("ca*")) == ["ca-key.pem", "ca.pem"]


@pytest.mark.parametrize("cut", ["phase-written", "key-copied", "both-copied", "next-removed"])
def test_every_crash_point_of_retire_loads_the_new_ca_alone(tmp_path: Path, cut: str) -> None:
    rollover.load_ca_set(tmp_path)
    rollover.start(tmp_path)
    new = rollover.reissue(tmp_path).signing
    # retire(), by hand, stopped at `cut` (a power cut): see mgmtplane.rollover.retire.
    (tmp_path / "ca-rollover.json").write_text('{"phase": "retiring"}')
    if cut != "phase-written":
        write_ca(new, tmp_path / "unused.pem", tmp_path / "ca-key.pem")  # the key is written first
    if cut in ("both-copied", "next-removed"):
        (tmp_path / "ca.pem").write_bytes(new.cert_pem)
    if cut == "next-removed":
        for name in ("ca-next-cross.pem", "ca-next.pem", "ca-next-key.pem"):
            (tmp_path / name).unlink()
    loaded = rollover.load_ca_set(tmp_path)
    assert [c.spki_hash for c in loaded.trusted] == [new.spki_hash] == [loaded.server.spki_hash]
    finished = rollover.retire(tmp_path)  # the next run finishes the job
    assert finished.phase == "none" and finished.server.spki_hash == new.spki_hash
    assert load_ca_files(tmp_path / "ca.pem", tmp_path / "ca-key.pem").spki_hash == new.spki_hash


def test_a_bad_phase_file_is_one_line(tmp_path: Path) -> None:
    rollover.load_ca_set(tmp_path)
    (tmp_path / "ca-rollover.json").write_text('{"phase": "halfway"}')
    with pytest.raises(PlaneError, match="ca-rollover.json: phase: expected one of added, reissue, retiring"):
        rollover.load_ca_set(tmp_path)


@pytest.mark.parametrize(("text", "seconds"), [("90d", 90 * 86400), ("5s", 5), ("12h", 43200), ("2", 2)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text, "--cert-lifetime", 2, 3650 * 86400) == seconds
    assert parse_duration(format_duration(seconds), "x", 2, 3650 * 86400) == seconds


@pytest.mark.parametrize(
    ("text", "says"), [("1s", "outside 2s to"), ("3651d", "outside"), ("soon", "not a duration")]
)
def test_parse_duration_errors(text: str, says: str) -> None:
    with pytest.raises(PlaneError, match=f"--cert-lifetime: '{text}' is {says}"):
        parse_duration(text, "--cert-lifetime", 2, 3650 * 86400)


def test_the_lifetime_setting(tmp_path: Path) -> None:
    assert load_settings(tmp_path).cert_lifetime == DEFAULT_CERT_LIFETIME == 90 * 86400
    save_settings(tmp_path, PlaneSettings(cert_lifetime=5))
    assert load_settings(tmp_path) == PlaneSettings(5)
    (tmp_path / "settings.json").write_text('{"cert_lifetime": "90d"}')
    with pytest.raises(PlaneError, match="settings.json: cert_lifetime: expected seconds as an integer"):
        load_settings(tmp_path)
    (tmp_path / "settings.json").write_text('{"cert_lifetime": 1}')
    with pytest.raises(PlaneError, match="outside 2..315360000 seconds"):
        load_settings(tmp_path)
