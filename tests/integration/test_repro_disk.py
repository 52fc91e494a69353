"""The filesystem half of reproducible builds, with the real tools: systemd-repart, mkfs.ext4, mkfs.vfat.

Two disks made from the same tree at different times (and with different ctimes in the tree, which
the build host cannot control) must be the same bytes under the build's environment; without it
they differ, and `appliance compare`'s explanation names the field.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from appliance.compare import compare_builds, explain_disk, gpt_regions
from appliance.repro import build_environment, ext4_hash_seed

SEED = "5b1f0c3e-4a5d-4f7b-9c1e-7a0d2b6c8e91"
EPOCH = 1795630200

pytestmark = pytest.mark.skipif(shutil.which("systemd-repart") is None, reason="needs systemd-repart")

DEFINITIONS = {
    "10-esp.conf": "[Partition]\nType=linux-generic\nLabel=ESP\nFormat=vfat\nCopyFiles=/efi:/\n"
    "SizeMinBytes=40M\nSizeMaxBytes=40M\n",
    "20-root.conf": "[Partition]\nType=root\nLabel=root-a\nFormat=ext4\nCopyFiles=/\n"
    "ExcludeFilesTarget=/efi/\nSizeMinBytes=48M\nSizeMaxBytes=48M\n",
}


def make_tree(root: Path) -> None:
    (root / "efi/EFI/BOOT").mkdir(parents=True)
    (root / "efi/EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ" + bytes(4000))
    many = root / "usr/lib/many"  # enough entries for an htree directory, where the hash seed matters
    many.mkdir(parents=True)
    for i in range(400):
        (many / f"module-with-a-long-name-{i:04d}.ko").write_text(str(i))
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=debian\n")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)  # what mkosi's mtime clamp leaves


def repart(tmp: Path, root: Path, out: Path, env: dict[str, str]) -> None:
    defs = tmp / "defs"
    defs.mkdir(exist_ok=True)
    for name, text in DEFINITIONS.items():
        (defs / name).write_text(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["systemd-repart", "--empty=create", "--size=auto", "--dry-run=no", "--offline=yes", "--no-pager",
         "--seed", SEED, f"--root={root}", f"--definitions={defs}", str(out)],
        env={**os.environ, **env}, check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def touch_ctimes(root: Path) -> None:
    """Change every ctime (as a second build's fresh tree has), keeping mtimes."""
    time.sleep(1.1)
    for path in root.rglob("*"):
        path.chmod(path.stat().st_mode)


def test_same_tree_at_another_time_gives_the_same_disk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    env = build_environment(EPOCH, ext4_hash_seed("gateway", "0.1.0"))
    repart(tmp_path, root, tmp_path / "a/disk.raw", env)
    touch_ctimes(root)
    repart(tmp_path, root, tmp_path / "b/disk.raw", env)
    result = compare_builds(tmp_path / "a", tmp_path / "b", ["disk.raw"])
    assert result.identical, result.details
    labels = [r.name for r in gpt_regions(tmp_path / "a/disk.raw")]
    assert "partition 1 (ESP)" in labels and "partition 2 (root-a)" in labels


def test_without_the_build_environment_the_disks_differ_and_compare_says_where(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    # SOURCE_DATE_EPOCH alone (repart's own handling): ext4 gets a random hash seed (and the vfat
    # volume label the clock's time, at two-second resolution: not asserted here).
    env = {"SOURCE_DATE_EPOCH": str(EPOCH)}
    repart(tmp_path, root, tmp_path / "a.raw", env)
    touch_ctimes(root)
    repart(tmp_path, root, tmp_path / "b.raw", env)
    lines = explain_disk(tmp_path / "a.raw", tmp_path / "b.raw")
    root_line = next(line for line in lines if line.startswith("partition 2 (root-a)"))
    assert "s_hash_seed" in root_line
    assert not any("GPT" in line for line in lines)  # the partition table comes from the Seed
