"""The SBOM (valid CycloneDX, deterministic) and `appliance verify` over a real artifact set on disk."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from appliance.errors import ApplianceError
from appliance.lock import LOCK_NAME, Package, format_lock
from appliance.ova import write_sha256sums
from appliance.sbom import SBOM_NAME, Wheel, make_sbom, read_sbom
from appliance.verify import CHECKS, parse_sums, register_check, verify

PACKAGES = [
    Package("bash", "5.2.37-2+b10", "amd64", "bash", "5.2.37-2", "2f" * 32),
    Package("bsdutils", "1:2.41.5-0+deb13u1", "amd64", "util-linux", "2.41.5-0+deb13u1", "d9" * 32),
    Package("ca-certificates", "20250419", "all", "ca-certificates", "20250419"),
]
WHEEL_NAME = "gateway_appliance-0.1.0-py3-none-any.whl"


def sbom_text(packages: list[Package] = PACKAGES, wheel_sha: str = "00" * 32, epoch: int = 1795630200) -> str:
    wheel = Wheel("gateway-appliance", "0.1.0", WHEEL_NAME, wheel_sha)
    return make_sbom(
        image="gateway", version="0.1.0", release="trixie", packages=packages, wheel=wheel, epoch=epoch
    )


def test_sbom_is_valid_cyclonedx_1_5() -> None:
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(sbom_text()) is None


def test_sbom_lists_every_package_with_version_source_and_hash() -> None:
    doc = json.loads(sbom_text())
    comps = {c["name"]: c for c in doc["components"]}
    assert set(comps) == {"bash", "bsdutils", "ca-certificates", "gateway-appliance"}
    bsd = comps["bsdutils"]
    purl = PackageURL.from_string(bsd["purl"])
    assert (purl.type, purl.namespace, purl.name, purl.version) == (
        "deb",
        "debian",
        "bsdutils",
        "1:2.41.5-0+deb13u1",
    )
    assert purl.qualifiers == {"arch": "amd64", "distro": "debian-trixie"}
    props = {p["name"]: p["value"] for p in bsd["properties"]}
    assert props == {"debian:architecture": "amd64", "debian:source": "util-linux",
                     "debian:source_version": "2.41.5-0+deb13u1"}  # fmt: skip
    assert bsd["hashes"] == [{"alg": "SHA-256", "content": "d9" * 32}]
    assert "hashes" not in comps["ca-certificates"]  # not in the package cache: no made-up hash
    assert PackageURL.from_string(comps["gateway-appliance"]["purl"]).type == "pypi"
    assert doc["metadata"]["timestamp"] == "2026-11-25T18:10:00Z"


def test_sbom_is_deterministic_and_its_serial_follows_the_content() -> None:
    assert sbom_text() == sbom_text(list(reversed(PACKAGES)))
    serial = json.loads(sbom_text())["serialNumber"]
    assert json.loads(sbom_text(PACKAGES[:2]))["serialNumber"] != serial


def test_read_sbom_rejects_other_documents() -> None:
    with pytest.raises(ApplianceError, match=r"^x.json: not valid JSON"):
        read_sbom("{", "x.json")
    with pytest.raises(ApplianceError, match=r"^x.json: not a CycloneDX document"):
        read_sbom('{"spdxVersion": "SPDX-2.3"}', "x.json")
    with pytest.raises(ApplianceError, match=r"^x.json: components\[0\]: expected a purl and a version"):
        read_sbom('{"bomFormat": "CycloneDX", "components": [{"name": "a"}]}', "x.json")


def make_set(root: Path) -> Path:
    """A small but complete artifact set, as a build writes it."""
    root.mkdir()
    (root / "gateway-0.1.0.ova").write_bytes(b"ova" * 1000)
    wheel = root / WHEEL_NAME
    wheel.write_bytes(b"PK wheel")
    (root / LOCK_NAME).write_text(format_lock(PACKAGES, image="gateway 0.1.0", release="trixie"))
    (root / SBOM_NAME).write_text(sbom_text(wheel_sha=hashlib.sha256(wheel.read_bytes()).hexdigest()))
    names = ["gateway-0.1.0.ova", WHEEL_NAME, LOCK_NAME, SBOM_NAME]
    write_sha256sums([root / n for n in names], root / "SHA256SUMS")
    return root


def problems(root: Path) -> dict[str, tuple[str, ...]]:
    return {r.name: r.problems for r in verify(root)}


def test_a_good_set_passes(tmp_path: Path) -> None:
    assert problems(make_set(tmp_path / "set")) == {"sums": (), "sbom": ()}


def test_a_changed_artifact_fails_the_sums(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set")
    with open(root / "gateway-0.1.0.ova", "r+b") as fh:
        fh.write(b"X")
    (sums,) = problems(root)["sums"]
    assert sums.startswith("gateway-0.1.0.ova: SHA-256 is ") and "SHA256SUMS says" in sums


def test_a_missing_artifact_fails_the_sums(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set")
    (root / "gateway-0.1.0.ova").unlink()
    assert problems(root)["sums"] == ("gateway-0.1.0.ova: listed in SHA256SUMS but missing",)


def test_an_sbom_that_disagrees_with_the_lock_fails(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set")
    other = [PACKAGES[0], Package("bsdutils", "1:2.41.6-1", "amd64", "util-linux", "2.41.6-1")]
    wheel_sha = hashlib.sha256((root / WHEEL_NAME).read_bytes()).hexdigest()
    (root / SBOM_NAME).write_text(sbom_text(other, wheel_sha=wheel_sha))
    names = ["gateway-0.1.0.ova", WHEEL_NAME, LOCK_NAME, SBOM_NAME]
    write_sha256sums(
        [root / n for n in names], root / "SHA256SUMS"
    )  # re-summed: only the sbom check can see it
    assert problems(root) == {
        "sums": (),
        "sbom": (
            "sbom.cdx.json: ca-certificates:all 20250419 is installed (packages.lock) but not listed",
            "sbom.cdx.json: bsdutils:amd64 is 1:2.41.6-1, packages.lock says 1:2.41.5-0+deb13u1",
        ),
    }


def test_an_sbom_naming_another_wheel_fails(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set")
    (root / SBOM_NAME).write_text(sbom_text(wheel_sha="11" * 32))
    (sbom,) = problems(root)["sbom"]
    assert sbom.startswith(f"sbom.cdx.json: the wheel's SHA-256 is {'11' * 32}, {WHEEL_NAME} has ")


def test_sums_must_list_lock_and_sbom(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set")
    write_sha256sums([root / "gateway-0.1.0.ova", root / WHEEL_NAME], root / "SHA256SUMS")
    assert problems(root)["sums"] == (
        "packages.lock: not listed in SHA256SUMS",
        "sbom.cdx.json: not listed in SHA256SUMS",
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "lists no files"),
        (f"{'a' * 64}  ../etc/passwd\n", "line 1: expected 'SHA256  NAME' (a plain file name)"),
        (f"{'a' * 63}  x.ova\n", "line 1: expected 'SHA256  NAME' (a plain file name)"),
        (f"{'a' * 64}  x.ova\n{'b' * 64}  x.ova\n", "line 2: x.ova is listed twice"),
    ],
)
def test_bad_sums_files_are_one_line_errors(text: str, problem: str) -> None:
    with pytest.raises(ApplianceError) as info:
        parse_sums(text, "build/SHA256SUMS")
    assert str(info.value).startswith(f"build/SHA256SUMS: {problem}")


def test_a_registered_check_runs_with_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # How the signature check of signed releases plugs in: one more entry in the table.
    monkeypatch.setattr("appliance.verify.CHECKS", dict(CHECKS))

    @register_check("signatures")
    def signatures(artifacts):  # type: ignore[no-untyped-def]
        return [] if (artifacts.root / "SHA256SUMS.sig").exists() else ["SHA256SUMS.sig: missing"]

    root = make_set(tmp_path / "set")
    assert problems(root)["signatures"] == ("SHA256SUMS.sig: missing",)
    with pytest.raises(ValueError, match="registered twice"):
        register_check("signatures")(signatures)
    assert [r.name for r in verify(root, ("sums",))] == ["sums"]
    with pytest.raises(ApplianceError, match="unknown verify check 'nope'"):
        verify(root, ("nope",))


def test_cli_verify_prints_a_line_per_check_and_fails_with_exit_1(tmp_path: Path) -> None:
    root = make_set(tmp_path / "set")
    cmd = [sys.executable, "-m", "appliance", "verify", str(root)]
    ok = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert (ok.returncode, ok.stdout) == (0, "verify: sums: OK\nverify: sbom: OK\n")
    (root / LOCK_NAME).write_text("garbage\n")
    bad = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "verify: sums: FAIL: " in bad.stderr and "packages.lock: SHA-256 is" in bad.stderr
    assert "verify: sbom: FAIL: " in bad.stderr and "line 1: expected 6 tab-separated fields" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = subprocess.run([*cmd[:-1], str(tmp_path / "none")], capture_output=True, text=True, check=False)
    assert (
        missing.returncode == 1
        and missing.stderr.startswith("error: ")
        and "SHA256SUMS: cannot read" in missing.stderr
    )
