"""Bundles for the update VM test, derived from the built image so CI builds the image only once.

N+1 is the OVA's own root filesystem (cut out of the raw disk by the build's code) with a new
IMAGE_VERSION written into it with debugfs, signed by the build's key: a real bundle of a real
image, differing from N only in its version. N+2 also replaces the gateway's entry point with one
that exits at once, so that its gateway cannot start. The refused ones are signed by another key,
damaged in the middle, or older than N.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from appliance.bundle import extract_partition, make_bundle
from appliance.signing import Signer, generate_signer


def debugfs_write(image: Path, local: Path, target: str) -> None:
    """Replace one file in an unmounted ext4 image (debugfs keeps the local file's mode)."""
    for request in (f"rm {target}", f"write {local} {target}"):
        subprocess.run(
            ["debugfs", "-w", "-R", request, str(image)], capture_output=True, text=True, check=True
        )
    # debugfs reports most failures only on stderr, with exit status 0: read the file back.
    if debugfs_read(image, target) != local.read_text():
        raise RuntimeError(f"debugfs could not replace {target} in {image}")


def debugfs_read(image: Path, target: str) -> str:
    proc = subprocess.run(
        ["debugfs", "-R", f"cat {target}", str(image)], capture_output=True, text=True, check=True
    )
    return proc.stdout


def derive_rootfs(raw: Path, dest: Path, version: str, *, broken_gateway: bool = False) -> Path:
    """The raw disk's slot A with IMAGE_VERSION set to `version` (and, if asked, a dead gateway)."""
    extract_partition(raw, dest)
    release = debugfs_read(dest, "/usr/lib/os-release")
    release, count = re.subn(r"(?m)^IMAGE_VERSION=.*$", f'IMAGE_VERSION="{version}"', release)
    assert count == 1, release
    local = dest.with_suffix(".os-release")
    local.write_text(release)
    local.chmod(0o644)
    debugfs_write(dest, local, "/usr/lib/os-release")
    if broken_gateway:
        script = dest.with_suffix(".gateway")
        script.write_text(
            '#!/bin/sh\necho "gateway: this build cannot start (update rollback test)" >&2\nexit 1\n'
        )
        script.chmod(0o755)
        debugfs_write(dest, script, "/usr/bin/gateway")
    return dest


def resign(bundle: Path, dest: Path, signer: Signer) -> Path:
    """The same bundle signed by another key (RAUC re-signs the manifest; no new payload)."""
    dest.unlink(missing_ok=True)
    argv = ["rauc", "resign", "--no-verify", f"--cert={signer.cert}", f"--key={signer.key}"]
    argv += [f"--keyring={signer.keyring}", str(bundle), str(dest)]
    subprocess.run(argv, capture_output=True, check=True)
    return dest


def make_test_bundles(
    raw: Path, signer: Signer, workdir: Path, compatible: str, versions: dict[str, str]
) -> dict[str, Path]:
    """next (N+1), broken (N+2), other-key and corrupt (both N+1) bundles in workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, broken in (("next", False), ("broken", True)):
        root = derive_rootfs(raw, workdir / f"{name}.ext4", versions[name], broken_gateway=broken)
        dest = workdir / f"{name}.raucb"
        out[name] = make_bundle(root, dest, compatible=compatible, version=versions[name], signer=signer)
        root.unlink()
    out["other-key"] = resign(out["next"], workdir / "other-key.raucb",
                              generate_signer(workdir / "other-signer", "Someone else"))  # fmt: skip
    data = bytearray(out["next"].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(b ^ 0xA5 for b in data[middle : middle + 4096])
    out["corrupt"] = workdir / "corrupt.raucb"
    out["corrupt"].write_bytes(bytes(data))
    return out
