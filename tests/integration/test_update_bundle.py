"""Signed update bundles end to end on the build host: real RAUC, real OpenSSL, real disk images.

The bundles are made by the build's own code (appliance.bundle, appliance.signing) with the host's
RAUC, and the appliance's install entry point (updater.install) judges them with the same RAUC
reading the image's system.conf (appliance/templates/rauc-system.conf.j2). Only the install itself,
which needs RAUC's service and the slot partitions, is left to the VM test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.bundle import extract_partition, make_bundle, partitions, write_update_config
from appliance.errors import ApplianceError
from appliance.ova import write_sha256sums
from appliance.signing import (
    ENV_CERT,
    ENV_KEY,
    Signer,
    generate_signer,
    resolve_signer,
    sign_file,
    verify_file,
)
from appliance.spec import Spec, load_spec
from updater.errors import UpdateError
from updater.install import install
from updater.rauc import Rauc
from updater.system import Appliance

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("rauc") is None, reason="rauc: run 'make setup'")


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(REPO / "appliance.yaml")


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Signer]:
    base = tmp_path_factory.mktemp("signers")
    return generate_signer(base / "vendor", "Vendor"), generate_signer(base / "other", "Someone else")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rootfs")
    tree = base / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/os-release").write_text('IMAGE_VERSION="0.2.0"\n')
    (tree / "payload").write_bytes(os.urandom(256 * 1024))  # squashfs needs more than a block
    image = base / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "16M"], check=True)
    return image


def appliance_tree(
    tmp_path: Path, spec: Spec, signer: Signer, version: str = "0.1.0"
) -> tuple[Appliance, Rauc]:
    """An appliance's files: the image's own RAUC config (rendered by the build), its keyring."""
    root = tmp_path / "appliance"
    work = tmp_path / "work"
    work.mkdir()
    write_update_config(spec, work, signer)
    conf = root / "usr/lib/rauc/system.conf"
    conf.parent.mkdir(parents=True)
    keyring = conf.parent / "keyring.pem"
    shutil.copy(work / "rauc-keyring.pem", keyring)
    conf.write_text(
        (work / "rauc-system.conf").read_text().replace("/usr/lib/rauc/keyring.pem", str(keyring))
    )
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("root=/dev/disk/by-partlabel/root-a ro rauc.slot=A\n")
    (root / "usr/lib/os-release").write_text(f'IMAGE_VERSION="{version}"\n')
    return Appliance(root), Rauc(run=refuse_install(Rauc().run), conf=conf)


def refuse_install(real: object) -> object:
    """RAUC as on the host, except that an install (service and slots are on the appliance) fails."""

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if "install" in argv:
            return subprocess.CompletedProcess(list(argv), 1, "", "LastError: no slots on a build host\n")
        return real(argv)  # type: ignore[operator, no-any-return]

    return run


def test_bundle_from_the_vendor_key_passes_the_checks(
    tmp_path: Path, spec: Spec, signers: tuple[Signer, Signer], rootfs: Path
) -> None:
    vendor, _ = signers
    bundle = make_bundle(rootfs, tmp_path / "b.raucb", compatible=spec.name, version="0.2.0", signer=vendor)
    app, rauc = appliance_tree(tmp_path, spec, vendor)
    info = rauc.info(bundle)
    assert (info.compatible, info.version) == (spec.name, "0.2.0")
    # Signature, product and version pass; only the (host-impossible) install step fails.
    with pytest.raises(UpdateError, match="install of 0.2.0 into slot B failed: no slots on a build host"):
        install(app, rauc, bundle)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("other-key", r"refused: signature verification failed: .*unable to get local issuer certificate"),
        ("other-product", r"refused: the bundle is for 'toaster', this appliance is 'gateway'"),
        (
            "downgrade",
            r"refused: 0\.0\.9 is older than the running 0\.1\.0 \(a downgrade needs --allow-downgrade\)",
        ),
        ("same-version", r"refused: version 0\.1\.0 is already running"),
        ("damaged-signature", r"refused: "),
    ],
)
def test_install_refuses_in_one_line(
    tmp_path: Path, spec: Spec, signers: tuple[Signer, Signer], rootfs: Path, case: str, expected: str
) -> None:
    vendor, other = signers
    signer = other if case == "other-key" else vendor
    product = "toaster" if case == "other-product" else spec.name
    version = {"downgrade": "0.0.9", "same-version": "0.1.0"}.get(case, "0.2.0")
    bundle = make_bundle(rootfs, tmp_path / "b.raucb", compatible=product, version=version, signer=signer)
    if case == "damaged-signature":
        data = bytearray(bundle.read_bytes())
        data[-200] ^= 0xFF  # inside the CMS signature at the end of the bundle
        bundle.write_bytes(bytes(data))
    app, rauc = appliance_tree(tmp_path, spec, vendor)
    with pytest.raises(UpdateError, match=expected) as err:
        install(app, rauc, bundle)
    assert "\n" not in err.value.message
    assert not app.state_file.exists()  # refused before anything was recorded or written


def test_downgrade_passes_when_allowed(
    tmp_path: Path, spec: Spec, signers: tuple[Signer, Signer], rootfs: Path
) -> None:
    vendor, _ = signers
    bundle = make_bundle(rootfs, tmp_path / "b.raucb", compatible=spec.name, version="0.0.9", signer=vendor)
    app, rauc = appliance_tree(tmp_path, spec, vendor)
    with pytest.raises(UpdateError, match="install of 0.0.9 into slot B failed"):
        install(app, rauc, bundle, allow_downgrade=True)


def test_sha256sums_signature_verifies_and_detects_tampering(
    tmp_path: Path, signers: tuple[Signer, Signer]
) -> None:
    vendor, other = signers
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("0" * 64 + "  gateway-0.1.0.ova\n")
    sign_file(sums, vendor)
    verify_file(sums, vendor.keyring)
    with pytest.raises(ApplianceError, match="does not verify against"):
        verify_file(sums, other.keyring)
    sums.write_text("1" * 64 + "  gateway-0.1.0.ova\n")
    with pytest.raises(ApplianceError, match="SHA256SUMS.sig: does not verify"):
        verify_file(sums, vendor.keyring)


def test_development_signer_is_made_once_and_only_certificates_go_to_the_image(
    tmp_path: Path, spec: Spec, caplog: pytest.LogCaptureFixture
) -> None:
    first = resolve_signer(spec, tmp_path, env={})
    assert first.development and "throwaway key" in caplog.text
    assert first.key.stat().st_mode & 0o777 == 0o600
    again = resolve_signer(spec, tmp_path, env={})
    assert again.keyring.read_bytes() == first.keyring.read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    write_update_config(spec, work, first)
    assert "PRIVATE KEY" not in (work / "rauc-keyring.pem").read_text()
    assert "compatible=gateway" in (work / "rauc-system.conf").read_text()


def test_vendor_signer_from_the_environment(
    tmp_path: Path, spec: Spec, signers: tuple[Signer, Signer]
) -> None:
    vendor, _ = signers
    signer = resolve_signer(spec, tmp_path, env={ENV_KEY: str(vendor.key), ENV_CERT: str(vendor.cert)})
    assert not signer.development and signer.keyring == vendor.cert
    with pytest.raises(ApplianceError, match=r"\$APPLIANCE_SIGNING_KEY: set, but signing.cert"):
        resolve_signer(spec, tmp_path, env={ENV_KEY: str(vendor.key)})
    with pytest.raises(ApplianceError, match="no such file"):
        resolve_signer(spec, tmp_path, env={ENV_KEY: str(tmp_path / "nope"), ENV_CERT: str(vendor.cert)})
    with pytest.raises(ApplianceError, match="holds a private key"):
        resolve_signer(spec, tmp_path, env={ENV_KEY: str(vendor.key), ENV_CERT: str(vendor.key)})


def test_root_partition_is_cut_out_byte_for_byte(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(64 * 2**20)
    layout = "label: gpt\nsize=8MiB, name=ESP\nsize=16MiB, name=root-a\nsize=8MiB, name=var\n"
    subprocess.run(["sfdisk", "--quiet", str(disk)], input=layout, text=True, check=True)
    part = next(p for p in partitions(disk) if p.name == "root-a")
    payload = os.urandom(4096)
    with open(disk, "r+b") as fh:
        fh.seek(part.offset + 5 * 2**20)  # data after a hole
        fh.write(payload)
    out = extract_partition(disk, tmp_path / "root.img")
    data = out.read_bytes()
    assert len(data) == part.size == 16 * 2**20
    assert data[5 * 2**20 : 5 * 2**20 + 4096] == payload
    assert (
        data[: 5 * 2**20].count(0) == 5 * 2**20
        and data[5 * 2**20 + 4096 :].count(0) == len(data) - 5 * 2**20 - 4096
    )
    assert out.stat().st_blocks * 512 < 2 * 2**20  # the holes stayed holes
    with pytest.raises(ApplianceError, match="expected one partition labelled root-b, found 0"):
        extract_partition(disk, tmp_path / "b.img", "root-b")


def test_verify_checks_the_signatures_of_a_set(
    tmp_path: Path, spec: Spec, signers: tuple[Signer, Signer], rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.signature_check import check_signatures
    from appliance.verify import open_set

    vendor, other = signers
    root = tmp_path / "set"
    root.mkdir()
    (root / "gateway-0.2.0.ova").write_bytes(b"ova")
    write_sha256sums([root / "gateway-0.2.0.ova"], root / "SHA256SUMS")
    sign_file(root / "SHA256SUMS", vendor)
    make_bundle(rootfs, root / "gateway-0.2.0.raucb", compatible=spec.name, version="0.2.0", signer=vendor)
    monkeypatch.setenv("APPLIANCE_SIGNING_KEYRING", str(vendor.keyring))
    assert check_signatures(open_set(root)) == []
    problems = check_signatures(open_set(root), other.keyring)
    assert len(problems) == 2
    assert problems[0].startswith(f"{root}/SHA256SUMS.sig: does not verify against {other.keyring}")
    assert problems[1].startswith(f"gateway-0.2.0.raucb: does not verify against {other.keyring}: ")
