"""The built artifacts themselves: OVA structure and schema, VMDK layout, sums, disk layout."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.bundle import extract_partition
from appliance.ova import check_ova
from appliance.render import DEFAULT_CACHE
from appliance.signing import DEV_DIR, verify_file
from appliance.spec import Spec
from appliance.vmdk import compare_with_raw

from .conftest import SCHEMAS

pytestmark = pytest.mark.timeout(900)


def test_ova_is_valid_and_schema_clean(artifacts: dict[str, Path], spec: Spec) -> None:
    result = check_ova(artifacts["ova"], schema_dir=SCHEMAS)
    assert result.members == (
        f"{spec.artifact_stem}.ovf",
        f"{spec.artifact_stem}.mf",
        f"{spec.artifact_stem}-disk1.vmdk",
    )
    assert result.disk_capacity == spec.hardware.disk_gib * 1024**3


def test_ova_disk_reads_back_identical_to_raw(artifacts: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(artifacts["ova"]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".vmdk"))
        tar.extract(member, tmp_path, filter="data")
    vmdk = tmp_path / member.name
    compare_with_raw(vmdk, artifacts["raw"])
    # An independent reader agrees: qemu-img's VMDK driver sees the same disk.
    proc = subprocess.run(
        ["qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(vmdk), str(artifacts["raw"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sha256sums_match(artifacts: dict[str, Path], spec: Spec) -> None:
    sums = (artifacts["raw"].parent / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in sums}
    disks = {artifacts[k].name for k in ("raw", "qcow2", "ova")}
    records = {"packages.lock", "sbom.cdx.json", f"gateway_appliance-{spec.version}-py3-none-any.whl"}
    # Not the bundle: SHA256SUMS lists what two builds make byte for byte (docs/updates.md).
    assert set(listed) == disks | records
    assert listed[artifacts["ova"].name] == sha256(artifacts["ova"])
    # Signed by the build's key (a development build's throwaway one here), and only by it.
    verify_file(artifacts["raw"].parent / "SHA256SUMS", DEFAULT_CACHE / DEV_DIR / "keyring.pem")


def sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def test_bundle_carries_the_ovas_root_slot_byte_for_byte(
    artifacts: dict[str, Path], spec: Spec, tmp_path: Path
) -> None:
    keyring = DEFAULT_CACHE / DEV_DIR / "keyring.pem"
    argv = ["rauc", f"--keyring={keyring}", "info", "--output-format=json", str(artifacts["raucb"])]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["compatible"], info["version"]) == (spec.name, spec.version)
    (image,) = info["images"]
    root = extract_partition(artifacts["raw"], tmp_path / "root-a.ext4")
    # RAUC checks this checksum of the image as it installs it: the slot gets the OVA's own bytes.
    assert image["rootfs"]["checksum"] == sha256(root)
    assert image["rootfs"]["size"] == root.stat().st_size == 2 * 1024**3


def test_disk_layout_is_hybrid_and_ab_ready(artifacts: dict[str, Path], spec: Spec) -> None:
    dump = subprocess.run(
        ["sfdisk", "--json", str(artifacts["raw"])], capture_output=True, text=True, check=True
    )
    table = json.loads(dump.stdout)["partitiontable"]
    assert table["label"] == "gpt"
    names = [p.get("name") for p in table["partitions"]]
    assert names == ["bios", "ESP", "root-a", "var"]
    types = [p["type"] for p in table["partitions"]]
    assert types[0] == "21686148-6449-6E6F-744E-656564454649"  # BIOS boot: grub core.img
    assert types[1] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # ESP: grub EFI binary
    # The disk is the spec's size, sparse: first boot grows /var and adds root-b into the rest.
    assert artifacts["raw"].stat().st_size == spec.hardware.disk_gib * 1024**3
    assert artifacts["raw"].stat().st_blocks * 512 < 1024**3
    with open(artifacts["raw"], "rb") as fh:
        mbr = fh.read(512)
    assert mbr[510:512] == b"\x55\xaa", "no BIOS boot code in the MBR"
