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

from appliance.errors import ApplianceError
from appliance.ovf import DiskInfo, render_ovf
from appliance.progress import PhaseProgress
from appliance.spec import Spec
from appliance.vmdk import DEFAULT_LEVEL, write_stream_optimized

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


def _source_date() -> int:
    # Reproducible builds: honour SOURCE_DATE_EPOCH, else the epoch; never the wall clock.
    try:
        return max(int(os.environ.get("SOURCE_DATE_EPOCH", "0")), 0)
    except ValueError:
        raise ApplianceError("SOURCE_DATE_EPOCH: expected an integer number of seconds") from None


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


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
    mtime = _source_date()
    total = sum(len(m) if isinstance(m, bytes) else m.stat().st_size for _, m in members)
    done = 0
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
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
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ApplianceError(f"{out_path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out
