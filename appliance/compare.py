"""Compare two builds' artifacts byte for byte, and say where a disk differs when it does.

A raw disk is split into its regions (protective MBR, GPT header and entries, each partition by
label, the backup GPT, the gaps) and each region is hashed; for a differing ext4 or vfat partition
the superblock fields that carry ids and times are named, and the number of differing 4 KiB blocks
is counted. That turns "the OVA differs" into "root-a: 3 blocks differ, s_mkfs_time".
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError

SECTOR = 512
BLOCK = 4096
CHUNK = 4 * 1024 * 1024
GPT_SIGNATURE = b"EFI PART"


@dataclass(frozen=True)
class Region:
    """A named byte range of a disk image."""

    name: str
    offset: int
    size: int


def gpt_regions(path: Path) -> list[Region]:
    """The regions of a GPT disk, in disk order, covering every byte of it."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(SECTOR * 2)
        if len(head) < 2 * SECTOR or head[SECTOR : SECTOR + 8] != GPT_SIGNATURE:
            raise ApplianceError(f"{path}: no GPT header at LBA 1")
        entries_lba, count, entry_size = struct.unpack_from("<QII", head, SECTOR + 72)
        fh.seek(entries_lba * SECTOR)
        table = fh.read(count * entry_size)
    entries_bytes = -(-count * entry_size // SECTOR) * SECTOR
    regions = [Region("protective MBR", 0, SECTOR), Region("GPT header", SECTOR, SECTOR)]
    regions.append(Region("GPT entries", entries_lba * SECTOR, entries_bytes))
    for i in range(count):
        entry = table[i * entry_size : (i + 1) * entry_size]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        label = entry[56:128].decode("utf-16-le", "replace").rstrip("\0") or f"partition {i + 1}"
        regions.append(Region(f"partition {i + 1} ({label})", first * SECTOR, (last - first + 1) * SECTOR))
    backup_entries = size - SECTOR - entries_bytes
    regions += [
        Region("backup GPT entries", backup_entries, entries_bytes),
        Region("backup GPT header", size - SECTOR, SECTOR),
    ]
    regions.sort(key=lambda r: r.offset)
    # Name the gaps too (alignment padding, where a stray byte would otherwise hide).
    filled: list[Region] = []
    pos = 0
    for region in regions:
        if region.offset > pos:
            filled.append(Region(f"gap at {pos}", pos, region.offset - pos))
        filled.append(region)
        pos = max(pos, region.offset + region.size)
    return filled


def _chunks(fh: object, offset: int, size: int) -> Iterator[bytes]:
    assert hasattr(fh, "seek") and hasattr(fh, "read")
    fh.seek(offset)
    left = size
    while left > 0:
        data = fh.read(min(CHUNK, left))
        if not data:
            return
        left -= len(data)
        yield data


# ext4 superblock fields (offset in the superblock, length) that hold ids and times.
_EXT4_FIELDS = {
    "s_mtime": (0x2C, 4),
    "s_wtime": (0x30, 4),
    "s_lastcheck": (0x40, 4),
    "s_uuid": (0x68, 16),
    "s_hash_seed": (0xEC, 16),
    "s_mkfs_time": (0x108, 4),
    "s_checksum_seed": (0x270, 4),
    "s_checksum": (0x3FC, 4),
}


def _fs_fields(head: bytes) -> dict[str, bytes]:
    """The id and time fields of an ext4 or vfat filesystem, from its first 2 KiB."""
    sb = head[1024:2048]
    if len(sb) == 1024 and sb[0x38:0x3A] == b"\x53\xef":
        return {name: sb[off : off + n] for name, (off, n) in _EXT4_FIELDS.items()}
    if head[510:512] == b"\x55\xaa" and head[0x52:0x5A].startswith(b"FAT32"):
        return {"vfat volume id": head[0x43:0x47], "vfat label": head[0x47:0x52]}
    if head[510:512] == b"\x55\xaa" and head[0x36:0x3B] == b"FAT16"[:5]:
        return {"vfat volume id": head[0x27:0x2B], "vfat label": head[0x2B:0x36]}
    return {}


def compare_region(a: Path, b: Path, region: Region, max_blocks: int = 5) -> str | None:
    """None if the region is the same in both files, else one line saying how it differs."""
    differing = 0
    first: list[int] = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for index, (ca, cb) in enumerate(
            zip(
                _chunks(fa, region.offset, region.size), _chunks(fb, region.offset, region.size), strict=False
            )
        ):
            if ca == cb:
                continue
            for j in range(0, len(ca), BLOCK):
                if ca[j : j + BLOCK] != cb[j : j + BLOCK]:
                    differing += 1
                    if len(first) < max_blocks:
                        first.append((index * CHUNK + j) // BLOCK)
        if not differing:
            return None
        fa.seek(region.offset)
        fb.seek(region.offset)
        fields_a, fields_b = _fs_fields(fa.read(2048)), _fs_fields(fb.read(2048))
    names = [k for k in fields_a if fields_a.get(k) != fields_b.get(k)]
    detail = f"; superblock fields differ: {', '.join(names)}" if names else ""
    return f"{region.name}: {differing} blocks of 4 KiB differ (first: {', '.join(map(str, first))}){detail}"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in _chunks(fh, 0, path.stat().st_size):
            sha.update(chunk)
    return sha.hexdigest()


def explain_disk(a: Path, b: Path) -> list[str]:
    """Where two raw disks differ, region by region (an empty list if they are the same)."""
    if a.stat().st_size != b.stat().st_size:
        return [f"{a.name}: sizes differ ({a.stat().st_size} != {b.stat().st_size})"]
    try:
        regions = gpt_regions(a)
    except ApplianceError:
        regions = [Region("whole file", 0, a.stat().st_size)]
    return [line for region in regions if (line := compare_region(a, b, region)) is not None]


@dataclass(frozen=True)
class Comparison:
    """The result of comparing two artifact directories."""

    same: tuple[str, ...]
    different: tuple[str, ...]
    missing: tuple[str, ...]
    details: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return not self.different and not self.missing


def compare_builds(
    a: Path, b: Path, names: Sequence[str], digests: tuple[Mapping[str, str], Mapping[str, str]] | None = None
) -> Comparison:
    """Compare the named files of two output directories; explain a differing raw disk.

    digests: each directory's verified {name: sha256} (its SHA256SUMS after `verify`), which saves
    hashing every file again; without them the files are hashed here.
    """
    same, different, missing, details = [], [], [], []
    for name in names:
        fa, fb = a / name, b / name
        if not fa.is_file() or not fb.is_file():
            missing.append(name)
            continue
        if digests and name in digests[0] and name in digests[1]:
            equal = digests[0][name] == digests[1][name]
        else:
            equal = fa.stat().st_size == fb.stat().st_size and file_sha256(fa) == file_sha256(fb)
        if equal:
            same.append(name)
            continue
        different.append(name)
        if name.endswith(".raw"):
            details += [f"{name}: {line}" for line in explain_disk(fa, fb)]
    return Comparison(tuple(same), tuple(different), tuple(missing), tuple(details))
