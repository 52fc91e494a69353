"""The OVA imports into KVM with virt-v2v, the way a KVM/OpenStack operator would bring it in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1800)


def test_ova_converts_with_virt_v2v(artifacts: dict[str, Path], tmp_path: Path) -> None:
    if not shutil.which("virt-v2v"):
        pytest.fail("virt-v2v is missing: run 'make setup'")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    proc = subprocess.run(
        ["virt-v2v", "-i", "ova", str(artifacts["ova"]), "-o", "local", "-os", str(out), "-of", "qcow2"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    # It recognised the guest (grub in /boot, an /etc/fstab, Debian's kernel and initrd) ...
    assert "Converting 13" in log, log[-3000:]
    assert "no bootloader detected" not in log
    # ... and wrote a libvirt domain and a disk that qemu-img can read.
    domains = list(out.glob("*.xml"))
    disks = [p for p in out.iterdir() if p.suffix != ".xml"]
    assert len(domains) == 1 and disks, list(out.iterdir())
    assert "<domain" in domains[0].read_text()
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(disks[0])], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == artifacts["raw"].stat().st_size
