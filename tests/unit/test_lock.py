"""The package lock: dpkg status in, lock text out and back, apt pins, drift between lock and image."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.lock import (
    NO_HASH,
    Package,
    apt_preferences,
    compare,
    drift_error,
    format_lock,
    load_lock,
    parse_dpkg_status,
    parse_lock,
    with_hashes,
)

STATUS = """\
Package: procps
Status: install ok installed
Priority: important
Architecture: amd64
Version: 2:4.0.4-9
Depends: libc6 (>= 2.34)
Description: /proc file system utilities
 This package provides command line and full screen utilities
 .
 for browsing procfs.

Package: libssl3t64
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: openssl
Version: 3.5.10-1~deb13u1

Package: python3-markupsafe
Status: install ok installed
Architecture: amd64
Source: markupsafe (2.1.5-1)
Version: 2.1.5-1+b3

Package: old-removed
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
"""


def test_dpkg_status_gives_installed_packages_with_their_sources() -> None:
    packages = parse_dpkg_status(STATUS)
    assert packages == [
        Package("libssl3t64", "3.5.10-1~deb13u1", "amd64", "openssl", "3.5.10-1~deb13u1"),
        Package("procps", "2:4.0.4-9", "amd64", "procps", "2:4.0.4-9"),
        # a binNMU: the source's version is not the binary's
        Package("python3-markupsafe", "2.1.5-1+b3", "amd64", "markupsafe", "2.1.5-1"),
    ]


def test_the_hosts_real_dpkg_database_parses(tmp_path: Path) -> None:
    status = Path("/var/lib/dpkg/status")
    if not status.exists():
        pytest.skip("not a Debian host")
    packages = parse_dpkg_status(status.read_text(), str(status))
    query = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status} ${Package} ${Version} ${source:Package}\\n"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    expected = sorted(line.split()[1:] for line in query if line.startswith("installed "))
    assert sorted([p.name, p.version, p.source] for p in packages) == expected
    # and the lock written from it reads back the same
    lock = tmp_path / "packages.lock"
    lock.write_text(format_lock(packages, image="host", release="bookworm"))
    assert load_lock(lock) == packages


def test_lock_round_trip_is_byte_stable() -> None:
    packages = with_hashes(parse_dpkg_status(STATUS), {"procps_2%3a4.0.4-9_amd64.deb": "ab" * 32})
    text = format_lock(packages, image="gateway 0.1.0", release="trixie")
    assert parse_lock(text, "x") == packages
    assert format_lock(list(reversed(packages)), image="gateway 0.1.0", release="trixie") == text
    procps = next(p for p in parse_lock(text, "x") if p.name == "procps")
    assert procps.sha256 == "ab" * 32
    assert all(p.sha256 == NO_HASH for p in parse_lock(text, "x") if p.name != "procps")


def test_deb_filename_encodes_the_epoch() -> None:
    assert (
        Package("procps", "2:4.0.4-9", "amd64", "procps", "2:4.0.4-9").deb_filename
        == "procps_2%3a4.0.4-9_amd64.deb"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no packages listed"),
        ("bash\t5.2\tamd64\tbash\n", "line 2: expected 6 tab-separated fields, got 4"),
        ("Bash\t5.2\tamd64\tbash\t5.2\t-\n", "line 2: Bash: bad package name 'Bash'"),
        ("bash\t5.2;rm\tamd64\tbash\t5.2\t-\n", "line 2: bash: bad version '5.2;rm'"),
        ("bash\t5.2\tamd64\tbash\t5.2\tnothex\n", "line 2: bash: bad sha256 'nothex' (64 hex digits or '-')"),
        (
            "bash\t5.2\tamd64\tbash\t5.2\t-\nbash\t5.3\tamd64\tbash\t5.3\t-\n",
            "line 3: bash:amd64 is listed twice",
        ),
    ],
)
def test_bad_locks_are_one_line_errors(text: str, problem: str) -> None:
    with pytest.raises(ApplianceError) as info:
        parse_lock("# comment\n" + text, "build/packages.lock")
    assert str(info.value) == f"build/packages.lock: {problem}"


def test_unreadable_lock_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ApplianceError, match=r"^.*/nope\.lock: cannot read the package lock: No such file"):
        load_lock(tmp_path / "nope.lock")
    (tmp_path / "bin.lock").write_bytes(b"\xff\xfe")
    with pytest.raises(ApplianceError, match="bin.lock: cannot read the package lock"):
        load_lock(tmp_path / "bin.lock")


def test_bad_dpkg_status_is_one_line() -> None:
    with pytest.raises(ApplianceError, match=r"^image: line 2: expected 'Field: value'"):
        parse_dpkg_status("Package: a\nno colon here\n", "image")
    with pytest.raises(ApplianceError, match=r"^image: line 1: the stanza has no Version field"):
        parse_dpkg_status("Package: a\nStatus: install ok installed\nArchitecture: all\n", "image")


def test_apt_preferences_pin_every_package_above_any_candidate() -> None:
    prefs = apt_preferences(parse_dpkg_status(STATUS))
    stanzas = [s for s in prefs.split("\n\n") if s]
    assert len(stanzas) == 3
    assert "Package: procps:amd64\nPin: version 2:4.0.4-9\nPin-Priority: 1001" in stanzas
    arch_all = apt_preferences([Package("adduser", "3.152", "all", "adduser", "3.152")])
    assert arch_all == "Package: adduser\nPin: version 3.152\nPin-Priority: 1001\n\n"


def test_compare_finds_changed_added_and_removed() -> None:
    locked = parse_dpkg_status(STATUS)
    newer = Package("procps", "2:4.0.4-10", "amd64", "procps", "2:4.0.4-10")
    login = Package("login", "1:4.17-1", "amd64", "shadow", "1:4.17-1")
    installed = [p for p in locked if p.name not in ("procps", "libssl3t64")] + [newer, login]
    drift = compare(locked, installed)
    assert [(old.version, new.version) for old, new in drift.changed] == [("2:4.0.4-9", "2:4.0.4-10")]
    assert drift.added == (login,)
    assert [p.name for p in drift.removed] == ["libssl3t64"]
    message = str(drift_error(Path("build/packages.lock"), drift))
    assert message.startswith("build/packages.lock: 1 package is not at the locked version: procps 2:4.0.4-9")
    assert "APPLIANCE_MIRROR" in message
    assert not compare(locked, locked).changed
