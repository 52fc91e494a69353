"""Independent tools agree with our artifacts: qemu-img reads the VMDK, GNU tar and sha256sum the rest."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.ova import build_ova, write_sha256sums
from appliance.spec import load_spec
from appliance.vmdk import GRAIN, GTES_PER_GT, write_stream_optimized

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} not installed")
    return path


@pytest.fixture
def raw(tmp_path: Path) -> tuple[Path, bytes]:
    rng = random.Random(11)
    path = tmp_path / "disk.raw"
    size = GRAIN * GTES_PER_GT + 3 * MIB + 4321  # two grain tables, unaligned tail
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset in (0, 5 * GRAIN - 7, MIB, GRAIN * GTES_PER_GT + 100, size - 999):
            fh.seek(offset)
            fh.write(rng.randbytes(3000))
        fh.seek(2 * MIB)
        fh.write(b"\x07" * GRAIN)
    return path, path.read_bytes()


def test_qemu_img_reads_the_vmdk_identically(raw: tuple[Path, bytes], tmp_path: Path) -> None:
    qemu_img = need("qemu-img")
    path, content = raw
    vmdk = tmp_path / "disk.vmdk"
    write_stream_optimized(path, vmdk, adapter="pvscsi")
    compare = subprocess.run(
        [qemu_img, "compare", "-f", "raw", "-F", "vmdk", str(path), str(vmdk)], capture_output=True, text=True
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    out = tmp_path / "back.raw"
    subprocess.run([qemu_img, "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(out)], check=True)
    back = out.read_bytes()
    assert back[: len(content)] == content and not any(back[len(content) :])
    check = subprocess.run([qemu_img, "check", str(vmdk)], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
    info = subprocess.run([qemu_img, "info", str(vmdk)], check=True, capture_output=True, text=True).stdout
    assert "create type: streamOptimized" in info
    assert "compressed: true" in info


def test_gnu_tar_and_sha256sum_agree(raw: tuple[Path, bytes], tmp_path: Path) -> None:
    tar = need("tar")
    sha256sum = need("sha256sum")
    spec = load_spec(REPO / "appliance.yaml")
    stem = spec.artifact_stem
    ova = build_ova(spec, raw[0], tmp_path / "out")
    listing = subprocess.run([tar, "-tvf", str(ova)], check=True, capture_output=True, text=True).stdout
    assert [line.split()[-1] for line in listing.splitlines()] == [
        f"{stem}.ovf",
        f"{stem}.mf",
        f"{stem}-disk1.vmdk",
    ]
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run([tar, "-xf", str(ova), "-C", str(unpacked)], check=True)
    # OVF manifest lines are a BSD-style tag format that GNU sha256sum also checks.
    subprocess.run([sha256sum, "--check", "--strict", "--quiet", f"{stem}.mf"], cwd=unpacked, check=True)
    # And qemu-img reads the disk taken out of the OVA.
    if shutil.which("qemu-img"):
        subprocess.run(
            [
                "qemu-img",
                "compare",
                "-f",
                "raw",
                "-F",
                "vmdk",
                str(raw[0]),
                str(unpacked / f"{stem}-disk1.vmdk"),
            ],
            check=True,
            capture_output=True,
        )
    sums = write_sha256sums([raw[0], ova], tmp_path / "SHA256SUMS")
    subprocess.run([sha256sum, "--check", "--strict", "--quiet", sums.name], cwd=tmp_path, check=True)
    assert os.path.relpath(ova, tmp_path) in sums.read_text()


def test_tar_block_offsets_as_virt_v2v_reads_them(raw: tuple[Path, bytes], tmp_path: Path) -> None:
    # virt-v2v -i ova reads disks in place: it takes "block N:" from `tar -tRvf` and assumes the data
    # starts one header block later. That holds only with a single ustar header per member.
    tar = need("tar")
    spec = load_spec(REPO / "appliance.yaml")
    ova = build_ova(spec, raw[0], tmp_path)
    out = subprocess.run(
        [tar, "--no-auto-compress", "-tRvf", str(ova)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "LANG": "C"},
    ).stdout
    with tarfile.open(ova) as archive:
        members = {m.name: m for m in archive.getmembers()}
    seen = 0
    for line in out.splitlines():
        fields = line.split(None, 7)
        if len(fields) != 8 or fields[0] != "block":
            continue
        block, size, name = int(fields[1].rstrip(":")), int(fields[4]), fields[7]
        assert (block + 1) * 512 == members[name].offset_data, name
        assert size == members[name].size
        seen += 1
    assert seen == 3
