"""The lock's apt preferences, read by the real apt of the build host.

The build host has two versions of some packages (bookworm's and bookworm-backports', which
scripts/setup-host.sh installs): mkosi (architecture all) and systemd (amd64). Pinned to the
version it would not choose, apt must choose the pinned one, as mkosi's apt does in a locked build.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.lock import Package, apt_preferences

pytestmark = pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs apt")


def apt_cache(*args: str, prefs: Path | None = None) -> str:
    opts = (
        ["-o", f"Dir::Etc::PreferencesParts={prefs}", "-o", "Dir::Etc::Preferences=/dev/null"]
        if prefs
        else []
    )
    return subprocess.run(["apt-cache", *opts, *args], capture_output=True, text=True, check=True).stdout


def candidate(name: str, prefs: Path | None = None) -> str:
    line = next(line for line in apt_cache("policy", name, prefs=prefs).splitlines() if "Candidate:" in line)
    return line.split(":", 1)[1].strip()


@pytest.mark.parametrize(("name", "arch"), [("mkosi", "all"), ("systemd", "amd64")])
def test_a_pin_makes_apt_choose_the_locked_version(tmp_path: Path, name: str, arch: str) -> None:
    versions = [line.split("|")[1].strip() for line in apt_cache("madison", name).splitlines()]
    if len(set(versions)) < 2:
        pytest.skip(f"apt knows one version of {name} here: {versions}")
    chosen = candidate(name)
    locked = next(v for v in versions if v != chosen)
    (tmp_path / "appliance-lock.pref").write_text(
        apt_preferences([Package(name, locked, arch, name, locked)])
    )
    assert candidate(name, prefs=tmp_path) == locked


def test_a_pin_to_a_version_the_mirror_lacks_is_ignored_by_apt(tmp_path: Path) -> None:
    # Why the build compares what it installed with the lock: apt itself says nothing.
    chosen = candidate("systemd")
    (tmp_path / "appliance-lock.pref").write_text(
        apt_preferences([Package("systemd", "1:0.0-gone", "amd64", "systemd", "1:0.0-gone")])
    )
    assert candidate("systemd", prefs=tmp_path) == chosen
