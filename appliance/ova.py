"""The OVA: `<stem>.ovf`, `<stem>.mf`, `<stem>-disk1.vmdk` in a plain POSIX ustar archive, in that order.

The VMDK is hashed while it is written, and read once more only to copy it into the tar; the tar
itself is hashed as it is written, so SHA256SUMS need not read the OVA again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from xml.etree import ElementTree as ET

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from appliance.errors import ApplianceError
from appliance.ovf import DiskInfo, render_ovf, validate_ovf
from appliance.progress import PhaseProgress
from appliance.repro import env_epoch
from appliance.spec import Spec
from appliance.vmdk import DEFAULT_LEVEL, read_footer, walk_stream, write_stream_optimized
from gwcore.atomic import atomic_writer, write_atomic

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tar pads the archive to whole records
COPY_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class OvaResult:
    """What build_ova wrote: the OVA, its SHA-256, and the hashes listed in its manifest."""

    path: Path
    sha256: str
    manifest: str
    members: tuple[str, ...]


def manifest_text(hashes: Iterable[tuple[str, str]]) -> str:
    """Manifest lines exactly `SHA256(file)= hex`."""
    return "".join(f"SHA256({name})= {digest}\n" for name, digest in hashes)


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.type = tarfile.REGTYPE
    try:
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    except ValueError as exc:  # ustar: names <= 100 bytes, sizes < 8 GiB
        raise ApplianceError(f"{name}: cannot be stored in a POSIX ustar archive: {exc}") from None


class _HashingFile:
    """Writes through to a file and hashes everything, tracking the offset."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes | memoryview) -> None:
        self.fh.write(data)
        self.sha.update(data)
        self.offset += len(data)


def _pad(out: _HashingFile) -> None:
    rem = out.offset % BLOCK
    if rem:
        out.write(bytes(BLOCK - rem))


def write_ustar(
    out_path: Path,
    members: list[tuple[str, bytes | Path]],
    progress: PhaseProgress | None = None,
) -> str:
    """Write a deterministic ustar archive of in-memory or on-disk members, in order; return its SHA-256."""
    mtime = env_epoch()
    total = sum(len(m) if isinstance(m, bytes) else m.stat().st_size for _, m in members)
    done = 0
    try:
        with atomic_writer(out_path) as fh:
            out = _HashingFile(fh)
            for name, member in members:
                if isinstance(member, bytes):
                    out.write(_tar_header(name, len(member), mtime))
                    out.write(member)
                    done += len(member)
                else:
                    size = member.stat().st_size
                    out.write(_tar_header(name, size, mtime))
                    with open(member, "rb") as src:
                        buf = bytearray(COPY_CHUNK)
                        view = memoryview(buf)
                        copied = 0
                        while (n := src.readinto(buf)) > 0:
                            out.write(view[:n])
                            copied += n
                            done += n
                            if progress:
                                progress("packing OVA", done, total)
                        if copied != size:
                            raise ApplianceError(f"{member}: changed size while packing ({copied} != {size})")
                _pad(out)
            out.write(bytes(2 * BLOCK))  # end-of-archive marker
            rem = out.offset % RECORD
            if rem:
                out.write(bytes(RECORD - rem))
    except OSError as exc:
        raise ApplianceError(f"{out_path}: cannot write: {exc.strerror or exc}") from None
    if progress:
        progress("packing OVA", total, total)
    return out.sha.hexdigest()


def pack_ova(
    spec: Spec,
    raw_path: Path,
    out_dir: Path,
    progress: PhaseProgress | None = None,
    *,
    level: int = DEFAULT_LEVEL,
    keep_vmdk: bool = False,
) -> OvaResult:
    """Convert the raw disk, render the OVF and manifest, and pack `<stem>.ova` in out_dir."""
    stem = spec.artifact_stem
    out_dir.mkdir(parents=True, exist_ok=True)
    names = (f"{stem}.ovf", f"{stem}.mf", f"{stem}-disk1.vmdk")
    vmdk_path = out_dir / names[2]

    def vmdk_progress(done: int, total: int) -> None:
        if progress:
            progress("converting disk", done, total)

    try:
        info = write_stream_optimized(
            raw_path,
            vmdk_path,
            adapter=str(spec.hardware.disk_controller),
            progress=vmdk_progress,
            level=level,
        )
        ovf = render_ovf(spec, DiskInfo.from_vmdk(info, names[2])).encode()
        manifest = manifest_text([(names[0], hashlib.sha256(ovf).hexdigest()), (names[2], info.sha256)])
        ova = out_dir / f"{stem}.ova"
        digest = write_ustar(
            ova, [(names[0], ovf), (names[1], manifest.encode()), (names[2], vmdk_path)], progress
        )
    finally:
        if not keep_vmdk:
            vmdk_path.unlink(missing_ok=True)
    log.info("wrote %s (%d bytes, disk %d of %d bytes populated)", ova, ova.stat().st_size,
             info.populated_size, info.capacity)  # fmt: skip
    return OvaResult(ova, digest, manifest, names)


def build_ova(
    spec: Spec,
    raw_path: Path,
    out_dir: Path,
    progress: PhaseProgress | None = None,
    *,
    level: int = DEFAULT_LEVEL,
) -> Path:
    """VMDK + OVF + manifest + tar in one call; returns the path of `<stem>.ova`."""
    return pack_ova(spec, raw_path, out_dir, progress, level=level).path


def sha256_file(path: Path, progress: PhaseProgress | None = None) -> str:
    """SHA-256 of a file, read in chunks (progress phase: `hashing NAME`)."""
    sha = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as fh:
        while (n := fh.readinto(buf)) > 0:
            sha.update(view[:n])
            done += n
            if progress:
                progress(f"hashing {path.name}", done, total)
    return sha.hexdigest()


def write_sha256sums(
    paths: Iterable[Path],
    out: Path,
    *,
    known: Mapping[Path, str] | None = None,
    progress: PhaseProgress | None = None,
) -> Path:
    """Write `sha256sum -c`-compatible lines for `paths` (relative to out's directory) atomically."""
    known = known or {}
    lines = []
    for path in paths:
        try:
            digest = known.get(path) or sha256_file(path, progress)
        except OSError as exc:
            raise ApplianceError(f"{path}: cannot hash: {exc.strerror or exc}") from None
        lines.append(f"{digest}  {os.path.relpath(path, out.parent)}\n")
    write_atomic(out, "".join(lines).encode())
    return out


# ---------------------------------------------------------------------------------------------
# Checking a finished OVA: what importers check, plus the VMDK layout, without unpacking it.


@dataclass(frozen=True)
class OvaCheck:
    """What check_ova() found in a valid OVA."""

    members: tuple[str, ...]
    disk_capacity: int
    disk_records: int  # markers walked in the VMDK stream


def _fail(path: Path, problem: str) -> ApplianceError:
    return ApplianceError(f"{path}: not a valid OVA: {problem}")


def check_ova(path: Path, *, schema_dir: Path | None = None) -> OvaCheck:
    """Check member order and format, manifest hashes, OVF references and the VMDK stream layout."""
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            members = tar.getmembers()
            for m in members:
                raw.seek(m.offset)
                if raw.read(BLOCK)[257:265] != b"ustar\x0000":
                    raise _fail(path, f"{m.name} is not in POSIX ustar format")
                if not m.isreg():
                    raise _fail(path, f"{m.name} is not a regular file")
            names = [m.name for m in members]
            if len(names) < 3 or not names[0].endswith(".ovf") or not names[1].endswith(".mf"):
                raise _fail(path, f"members are {names}, expected the .ovf, then the .mf, then the disks")
            hashes = {}
            for m in members:
                sha = hashlib.sha256()
                fh = tar.extractfile(m)
                assert fh is not None
                while chunk := fh.read(COPY_CHUNK):
                    sha.update(chunk)
                hashes[m.name] = sha.hexdigest()
            ovf_file, mf_file = tar.extractfile(members[0]), tar.extractfile(members[1])
            assert ovf_file is not None and mf_file is not None
            ovf, manifest = ovf_file.read().decode(), mf_file.read().decode()
    except (OSError, tarfile.TarError, UnicodeDecodeError) as exc:
        raise _fail(path, str(exc)) from None

    listed: dict[str, str] = {}
    for number, line in enumerate(manifest.splitlines(), 1):
        name, sep, digest = line.partition(")= ")
        if not (name.startswith("SHA256(") and sep and len(digest) == 64):
            raise _fail(path, f"{names[1]} line {number}: expected 'SHA256(file)= hex', got {line!r}")
        listed[name[len("SHA256(") :]] = digest
    if set(listed) != set(names) - {names[1]}:
        raise _fail(
            path, f"{names[1]} lists {sorted(listed)}, the archive holds {sorted(set(names) - {names[1]})}"
        )
    for name, digest in listed.items():
        if hashes[name] != digest:
            raise _fail(path, f"{name}: SHA-256 {hashes[name]} does not match the manifest's {digest}")

    if schema_dir is not None:
        validate_ovf(ovf, schema_dir)
    ns = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1"}
    try:
        root = DET.fromstring(ovf)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise _fail(path, f"{names[0]}: {exc}") from None
    sizes = {m.name: m.size for m in members}
    capacity = 0
    records = 0
    for ref in root.iterfind("ovf:References/ovf:File", ns):
        href, size = ref.get(f"{{{ns['ovf']}}}href", ""), ref.get(f"{{{ns['ovf']}}}size")
        if href not in sizes:
            raise _fail(path, f"the OVF references {href!r}, which is not in the archive")
        if size is not None and int(size) != sizes[href]:
            raise _fail(path, f"the OVF gives {href} ovf:size={size}, the file has {sizes[href]} bytes")
        member = next(m for m in members if m.name == href)
        window = {"offset": member.offset_data, "size": member.size}
        _header, _descriptor, walked = walk_stream(path, **window)
        if [r.kind for r in walked[-3:]] != ["gd", "footer", "eos"]:
            raise _fail(path, f"{href}: the stream does not end with GD, footer and end-of-stream markers")
        capacity += read_footer(path, **window).capacity * 512
        records += len(walked)
    return OvaCheck(tuple(names), capacity, records)
