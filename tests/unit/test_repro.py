"""The build's date and environment (appliance/repro.py), and the mkosi config that carries them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.lock import Package
from appliance.render import BuildPaths, render_mkosi
from appliance.repro import (
    apply_build_environment,
    build_environment,
    cache_key,
    env_epoch,
    ext4_hash_seed,
    prune_caches,
    reproducible_environment,
    source_date_epoch,
)
from appliance.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def git_repo(path: Path, when: int) -> Path:
    env = {**os.environ, "GIT_COMMITTER_DATE": f"@{when} +0200", "GIT_AUTHOR_DATE": "@1 +0000"}
    for cmd in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
                "--allow-empty", "-m", "x"]):  # fmt: skip
        subprocess.run(["git", "-C", str(path), *cmd], env=env, check=True, capture_output=True)
    return path


def test_the_epoch_is_the_commit_time_not_the_author_time(tmp_path: Path) -> None:
    assert source_date_epoch(git_repo(tmp_path, 1795630200), environ={}) == 1795630200


def test_the_environment_wins_over_the_commit(tmp_path: Path) -> None:
    repo = git_repo(tmp_path, 1795630200)
    assert source_date_epoch(repo, environ={"SOURCE_DATE_EPOCH": "1700000000"}) == 1700000000


def test_no_git_and_no_environment_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(
        ApplianceError, match=r"not a git checkout, so the build has no date to use \(set SOURCE"
    ):
        source_date_epoch(tmp_path, environ={})


@pytest.mark.parametrize("bad", ["soon", "-5", "1.5", ""])
def test_bad_epochs_are_one_line_errors(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ApplianceError, match=r"^SOURCE_DATE_EPOCH: expected (an integer|a number)"):
        source_date_epoch(tmp_path, environ={"SOURCE_DATE_EPOCH": bad})


def test_apply_sets_every_variable_and_warns_on_a_dirty_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    repo = git_repo(tmp_path, 1795630200)
    # set, then deleted: monkeypatch then restores each variable as it was after the test
    for key in build_environment(0, "x"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    assert apply_build_environment(repo, "gateway", "0.1.0") == 1795630200
    assert env_epoch() == 1795630200
    env = reproducible_environment()
    assert env == build_environment(1795630200, ext4_hash_seed("gateway", "0.1.0"))
    assert "hash_seed=" in env["SYSTEMD_REPART_MKFS_OPTIONS_EXT4"]
    # mke2fs keeps only the last -E: repart's own options must be repeated with the seed
    assert env["SYSTEMD_REPART_MKFS_OPTIONS_EXT4"].startswith("-E discard,lazy_itable_init=1,")
    assert "uncommitted" not in caplog.text
    (repo / "f").write_text("x")
    subprocess.run(["git", "-C", str(repo), "add", "f"], check=True)
    apply_build_environment(repo, "gateway", "0.1.0")
    assert "uncommitted changes" in caplog.text


def test_hash_seed_is_stable_per_image_version() -> None:
    assert ext4_hash_seed("gateway", "0.1.0") == ext4_hash_seed("gateway", "0.1.0")
    assert ext4_hash_seed("gateway", "0.1.0") != ext4_hash_seed("gateway", "0.1.1")


def test_generated_config_carries_epoch_environment_finalize_and_pins(tmp_path: Path) -> None:
    spec = load_spec(REPO / "appliance.yaml")
    paths = BuildPaths(tmp_path / "out", cache=tmp_path / "cache")
    env = build_environment(1795630200, ext4_hash_seed("gateway", "0.1.0"))
    pins = [Package("procps", "2:4.0.4-9", "amd64", "procps", "2:4.0.4-9")]
    conf = render_mkosi(spec, paths, environment=env, pins=pins).read_text()
    assert "SourceDateEpoch=1795630200" in conf
    assert f'"SYSTEMD_REPART_MKFS_OPTIONS_EXT4={env["SYSTEMD_REPART_MKFS_OPTIONS_EXT4"]}"' in conf
    assert "FinalizeScripts=" in conf and "export-packages.finalize" in conf
    prefs = paths.generated / "pkgmngr/etc/apt/preferences.d/appliance-lock.pref"
    assert prefs.read_text() == "Package: procps:amd64\nPin: version 2:4.0.4-9\nPin-Priority: 1001\n\n"
    # a later build without a lock must not keep the old pins
    render_mkosi(spec, paths, environment=env)
    assert not prefs.exists()


def test_cache_key_follows_the_date_and_the_pins() -> None:
    pins = [Package("procps", "2:4.0.4-9", "amd64", "procps", "2:4.0.4-9")]
    assert cache_key(1, ()) == "1-unpinned"
    assert cache_key(1, pins) == cache_key(1, pins) != cache_key(2, pins)
    other = [Package("procps", "2:4.0.4-10", "amd64", "procps", "2:4.0.4-10")]
    assert cache_key(1, pins) != cache_key(1, other)


def test_prune_keeps_recent_caches_and_the_current_one(tmp_path: Path) -> None:
    parent = tmp_path / "incremental" / "gateway-trixie"
    old, recent, current = parent / "1-unpinned", parent / "2-unpinned", parent / "3-unpinned"
    for path in (old, recent):
        (path / "tree").mkdir(parents=True)
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    prune_caches(current)
    assert sorted(p.name for p in parent.iterdir()) == ["2-unpinned", "3-unpinned"]


def test_mirrors_come_from_the_environment_for_snapshot_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(REPO / "appliance.yaml")
    paths = BuildPaths(tmp_path / "out", cache=tmp_path / "cache")
    sources = paths.generated / "pkgmngr/etc/apt/sources.list.d/mkosi.sources"
    monkeypatch.delenv("APPLIANCE_MIRROR", raising=False)
    monkeypatch.delenv("APPLIANCE_SECURITY_MIRROR", raising=False)
    render_mkosi(spec, paths)
    assert "deb.debian.org/debian\n" in sources.read_text() and "Check-Valid-Until" not in sources.read_text()
    snap = "http://snapshot.debian.org/archive/debian/20261125T000000Z"
    monkeypatch.setenv("APPLIANCE_MIRROR", snap)
    monkeypatch.setenv("APPLIANCE_SECURITY_MIRROR", snap.replace("/debian/", "/debian-security/"))
    render_mkosi(spec, paths)
    text = sources.read_text()
    assert f"URIs: {snap}\n" in text and "debian-security/20261125T000000Z" in text
    assert text.count("Check-Valid-Until: no") == 2  # a snapshot's Release files are past Valid-Until
