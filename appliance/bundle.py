"""The update bundle: the OVA's root filesystem (slot A's bytes, cut from the raw disk) in a signed
RAUC bundle of the dm-verity format, and the RAUC configuration that goes into the image.

Kept apart from build.py so that the build's other steps and this one change independently.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from appliance.errors import ApplianceError
from appliance.run import run
from appliance.signing import Signer
from appliance.spec import Spec

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
ROOT_LABEL = "root-a"
SLOT_CLASS = "rootfs"
CHUNK = 1 << 20
# zstd: the appliance decompresses the bundle while it installs, and under emulation xz's slower
# decompression would dominate the install; level 15 keeps the bundle close to xz's size.
MKSQUASHFS_ARGS = "-comp zstd -Xcompression-level 15 -b 256K"


@dataclass(frozen=True)
class Partition:
    """One GPT partition of a disk image, in bytes."""

    name: str
    offset: int
    size: int


def partitions(raw: Path) -> list[Partition]:
    """The disk image's GPT partitions (sfdisk's JSON dump)."""
    dump = json.loads(run(["sfdisk", "--json", raw], capture=True).stdout)["partitiontable"]
    sector = int(dump.get("sectorsize", 512))
    return [
        Partition(p.get("name", ""), int(p["start"]) * sector, int(p["size"]) * sector)
        for p in dump["partitions"]
    ]


def extract_partition(raw: Path, dest: Path, label: str = ROOT_LABEL) -> Path:
    """Copy the partition labelled `label` out of the disk image, byte for byte, keeping holes."""
    found = [p for p in partitions(raw) if p.name == label]
    if len(found) != 1:
        raise ApplianceError(f"{raw}: expected one partition labelled {label}, found {len(found)}")
    part = found[0]
    with open(raw, "rb") as src, open(dest, "wb") as out:
        src.seek(part.offset)
        left = part.size
        while left:
            block = src.read(min(CHUNK, left))
            if not block:
                raise ApplianceError(f"{raw}: ends inside partition {label}")
            if block.count(0) == len(block):
                out.seek(len(block), os.SEEK_CUR)  # a hole: the bundle's squashfs stores it as one too
            else:
                out.write(block)
            left -= len(block)
        out.truncate(part.size)
    return dest


def manifest(compatible: str, version: str, build: str, rootfs_name: str) -> str:
    """The bundle's manifest (RAUC's INI format)."""
    return (
        "[update]\n"
        f"compatible={compatible}\n"
        f"version={version}\n"
        f"build={build}\n"
        f"description=Gateway appliance {version}\n\n"
        "[bundle]\n"
        "format=verity\n\n"
        f"[image.{SLOT_CLASS}]\n"
        f"filename={rootfs_name}\n"
    )


def make_bundle(
    rootfs: Path, dest: Path, *, compatible: str, version: str, signer: Signer, build: str = ""
) -> Path:
    """Sign `rootfs` (an ext4 image) into the RAUC bundle `dest`."""
    for ch in compatible + version + build:
        if ch in "\n\r[]=":
            raise ApplianceError(
                f"bundle manifest: {compatible!r}/{version!r}/{build!r}: unsafe character {ch!r}"
            )
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=dest.parent) as tmp:
        content = Path(tmp) / "content"
        content.mkdir()
        image = content / "rootfs.ext4"
        try:
            os.link(rootfs, image)
        except OSError:
            shutil.copyfile(rootfs, image)
        (content / "manifest.raucm").write_text(manifest(compatible, version, build or version, image.name))
        dest.unlink(missing_ok=True)
        run(["rauc", "bundle", f"--cert={signer.cert}", f"--key={signer.key}", f"--keyring={signer.keyring}",
             f"--mksquashfs-args={MKSQUASHFS_ARGS}", content, dest], capture=True)  # fmt: skip
    return dest


def bundle_path(spec: Spec, output: Path) -> Path:
    return output / f"{spec.artifact_stem}.raucb"


def build_bundle(spec: Spec, raw: Path, output: Path, signer: Signer) -> Path:
    """The spec's bundle from the raw disk the same build made."""
    dest = bundle_path(spec, output)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=output) as tmp:
        rootfs = extract_partition(raw, Path(tmp) / "rootfs.ext4")
        make_bundle(rootfs, dest, compatible=spec.name, version=spec.version, signer=signer)
    return dest


def write_update_config(spec: Spec, work: Path, signer: Signer) -> None:
    """RAUC's system.conf and the keyring, where the image's post-install script picks them up."""
    env = SandboxedEnvironment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                               keep_trailing_newline=True)  # fmt: skip
    text = env.get_template("rauc-system.conf.j2").render(spec=spec, compatible=spec.name)
    (work / "rauc-system.conf").write_text(text)
    keyring = signer.keyring.read_text()
    if "PRIVATE KEY" in keyring:
        raise ApplianceError(f"{signer.keyring}: holds a private key; only certificates go into the image")
    (work / "rauc-keyring.pem").write_text(keyring)
