"""The plane's rollout state files and the facts it plans from (mgmtplane.releases, mgmtplane.rollout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gwcore import update as um
from mgmtplane.errors import PlaneError
from mgmtplane.releases import Release, default_keyring, load_releases
from mgmtplane.rollout import RolloutStore, facts_of, offer_message, rollout_from_json, rollout_to_json
from mgmtplane.rollout_plan import Rollout, parse_window

RELEASE = Release("0.2.0", "ab" * 32, 1234, "2026-12-06T18:00:00+00:00", False, True, "gateway")


def test_the_default_keyring_is_the_builds_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("APPLIANCE_SIGNING_KEYRING", raising=False)
    monkeypatch.setenv("APPLIANCE_CACHE_DIR", str(tmp_path))
    assert default_keyring() == tmp_path / "dev-signing/keyring.pem"
    monkeypatch.setenv("APPLIANCE_SIGNING_KEYRING", "/vendor/ca.pem")
    assert default_keyring() == Path("/vendor/ca.pem")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{", "releases.json: invalid JSON"),
        ('{"releases": []}', "releases: expected an object"),
        ('{"releases": {"0.2.0": {"version": "0.2.0"}}}', "releases.0.2.0: missing field sha256"),
        ('{"releases": {"../x": {"version": "../x", "sha256": "a", "size": 1, "added_at": "",'
         ' "compatible": ""}}}', "releases.../x: not a valid version"),
    ],
)  # fmt: skip
def test_a_bad_releases_file_is_named(tmp_path: Path, content: str, words: str) -> None:
    (tmp_path / "releases.json").write_text(content)
    with pytest.raises(PlaneError, match="releases") as info:
        load_releases(tmp_path)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_rollout_survives_its_file_and_bad_ones_are_named(tmp_path: Path) -> None:
    rollout = Rollout(
        "r-20261206180000-ab12", "0.2.0", "site", site="lab", canaries=("c",), max_parallel=3,
        windows=dict([parse_window("lab=Pacific/Auckland,Mon-Fri,22:00-04:00")]), urgent=True,
        admitted=("c",), halted="halted by the operator", excused={"x": 12.5},
    )  # fmt: skip
    path = tmp_path / "rollouts.json"
    assert rollout_from_json(path, json.loads(json.dumps(rollout_to_json(rollout)))) == rollout
    for change, words in [
        ({"id": "a b"}, "current.id"),
        ({"version": "../x"}, "current.version"),
        ({"scope": "planet"}, "current.scope"),
        ({"max_parallel": 0}, "current.max_parallel"),
        ({"canaries": "c"}, "current.canaries"),
        ({"windows": {"lab": {"tz": "Nowhere/Else", "weekdays": [0], "start": "22:00", "end": "04:00"}}},
         "current.windows.lab: unknown time zone"),
        ({"windows": {"lab": {"tz": "UTC"}}}, "current.windows.lab: expected tz, weekdays"),
    ]:  # fmt: skip
        with pytest.raises(PlaneError) as info:
            rollout_from_json(path, {**rollout_to_json(rollout), **change})
        assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


def test_a_new_rollout_moves_the_unfinished_one_to_the_history(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)
    first, second = Rollout("r-1", "0.2.0", "all"), Rollout("r-2", "0.2.1", "all", canaries=("c",))
    assert store.replace_current(first, "t1") is None
    store.save(first, "running", None, "t2")
    replaced = store.replace_current(second, "t3")
    assert replaced is not None and replaced["id"] == "r-1"
    current, raw = store.current()
    assert current == second and raw["phase"] == "canary" and raw["created_at"] == "t3"
    assert store.history()[0]["phase"] == "superseded" and store.history()[0]["reason"] == "replaced by r-2"


def test_facts_read_sites_statuses_and_health_versions() -> None:
    gateways = {
        "a": {"gateway_id": "a", "site": "lab"},
        "b": {"gateway_id": "b"},  # no site field: no site
        "r": {"gateway_id": "r", "state": "revoked"},
    }
    statuses = {"a": {"running": "0.1.0", "state": "failed", "target": "0.2.0", "reason": "x", "at": 5}}
    facts = {f.id: f for f in facts_of(gateways, statuses, {"a"}, {"a": "0.0.1", "b": "0.1.0"})}
    assert set(facts) == {"a", "b"}
    a, b = facts["a"], facts["b"]
    assert (a.site, a.connected, a.running, a.state, a.reason, a.at) == (
        "lab",
        True,
        "0.1.0",
        um.UpdateState.FAILED,
        "x",
        5.0,
    )
    assert (b.site, b.connected, b.running, b.state) == (None, False, "0.1.0", None)


def test_the_offer_the_plane_sends_is_one_the_gateway_accepts() -> None:
    rollout = Rollout("r-1", "0.2.0", "all", urgent=True)
    message = offer_message(rollout, RELEASE, "https://plane.example:8443", True, False)
    offer = um.parse_update_offer(message)
    assert offer.url == "https://plane.example:8443/v1/releases/0.2.0/bundle"
    assert (offer.install, offer.reboot, offer.downgrade, offer.urgent, offer.rollout) == (
        True,
        False,
        True,
        True,
        "r-1",
    )
