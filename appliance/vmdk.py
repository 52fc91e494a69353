"""Raw disk -> VMware streamOptimized VMDK (VMDK 5.0 spec), and a reader that checks it back.

Layout written, in one sequential pass:
  header (monolithicSparse, version 3, flags: newline test + compressed grains + markers, gdOffset =
  GD_AT_END) | embedded descriptor (createType="streamOptimized") | for each GT's worth of grains:
  grain markers with deflated data, then a GT marker and that grain table | GD marker and grain
  directory | footer marker and the footer (the header again, with the real gdOffset) | EOS marker.
All-zero grains and holes are skipped. Every structure starts on a 512-byte sector.
`qemu-img convert -O vmdk -o subformat=streamOptimized` does not write this layout (no GT/GD
markers, no footer), and VMware's importers check for it.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import ApplianceError
from appliance.repro import env_epoch
from gwcore.atomic import atomic_writer

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

SECTOR = 512
GRAIN_SECTORS = 128  # 64 KiB grains, what VMware writes
GRAIN = GRAIN_SECTORS * SECTOR
GTES_PER_GT = 512
GT_SECTORS = GTES_PER_GT * 4 // SECTOR
MAGIC = 0x564D444B  # "KDMV" on disk
VERSION = 3
FLAG_NEWLINE_TEST = 1 << 0
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
FLAGS = FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS
COMPRESS_DEFLATE = 1
GD_AT_END = 0xFFFFFFFFFFFFFFFF
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
# Grains start at sector 128 like VMware's own streamOptimized files; the descriptor gets the rest.
OVERHEAD_SECTORS = 128
DESCRIPTOR_SECTORS = OVERHEAD_SECTORS - 1
# zlib level 1: see bench/vmdk.py. Higher levels cost 2-4x the time for a few percent of size.
DEFAULT_LEVEL = 1
CHUNK_GRAINS = 32  # 2 MiB per read; bounded memory whatever the disk size

_HEADER = struct.Struct("<IIIQQQQIQQQB4sH")
_MARKER = struct.Struct("<QII")  # val (LBA or sector count), size (compressed bytes or 0), type
_ZERO_GRAIN = bytes(GRAIN)

# ddb.adapterType only knows ide, buslogic, lsilogic and legacyESX; the OVF's controller is what
# importers attach the disk to. IDE geometry differs, so SATA disks describe themselves as ide.
_ADAPTER_TYPES = {
    "pvscsi": "lsilogic",
    "lsilogic": "lsilogic",
    "lsilogicsas": "lsilogic",
    "buslogic": "buslogic",
    "sata": "ide",
    "ide": "ide",
}


@dataclass(frozen=True)
class VmdkInfo:
    """What the OVF needs to know about a written VMDK."""

    path: Path
    capacity: int  # virtual disk size in bytes (whole sectors)
    populated_size: int  # bytes of non-zero grains, OVF's populatedSize
    file_size: int
    sha256: str  # of the VMDK file, computed while writing
    grains: int  # grains written (non-zero)


def adapter_type(controller: str) -> str:
    """ddb.adapterType for a disk controller name (pvscsi, sata, ...)."""
    try:
        return _ADAPTER_TYPES[str(controller)]
    except KeyError:
        known = ", ".join(sorted(_ADAPTER_TYPES))
        raise ApplianceError(f"vmdk: unknown disk controller {controller!r} (known: {known})") from None


def _geometry(capacity_sectors: int, adapter: str) -> tuple[int, int, int]:
    if adapter == "ide":
        heads, sectors, max_cyl = 16, 63, 16383
    else:
        heads, sectors, max_cyl = 255, 63, 65535
    return min(-(-capacity_sectors // (heads * sectors)), max_cyl), heads, sectors


def make_descriptor(extent_name: str, capacity_sectors: int, adapter: str, cid: int) -> str:
    """The embedded disk descriptor text."""
    cylinders, heads, sectors = _geometry(capacity_sectors, adapter)
    long_id = hashlib.sha256(f"{cid}:{extent_name}:{capacity_sectors}".encode()).hexdigest()[:32]
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        f"CID={cid:08x}\n"
        "parentCID=ffffffff\n"
        'createType="streamOptimized"\n'
        "\n"
        "# Extent description\n"
        f'RW {capacity_sectors} SPARSE "{extent_name}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        f'ddb.adapterType = "{adapter}"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        f'ddb.geometry.heads = "{heads}"\n'
        f'ddb.geometry.sectors = "{sectors}"\n'
        f'ddb.longContentID = "{long_id}"\n'
        # open-vm-tools on the guest: install type 4, version "unmanaged".
        'ddb.toolsInstallType = "4"\n'
        'ddb.toolsVersion = "2147483647"\n'
        # Obsolete (ESX 3.x read it); VMware's own streamOptimized writer still puts 4 here.
        'ddb.virtualHWVersion = "4"\n'
    )


def pack_header(capacity_sectors: int, gd_offset: int) -> bytes:
    """A 512-byte SparseExtentHeader for a streamOptimized extent."""
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        FLAGS,
        capacity_sectors,
        GRAIN_SECTORS,
        1,  # descriptorOffset
        DESCRIPTOR_SECTORS,
        GTES_PER_GT,
        0,  # rgdOffset: no redundant tables in a stream
        gd_offset,
        OVERHEAD_SECTORS,
        0,  # uncleanShutdown
        b"\n \r\n",
        COMPRESS_DEFLATE,
    )
    return header.ljust(SECTOR, b"\0")


def _marker(val: int, kind: int) -> bytes:
    return _MARKER.pack(val, 0, kind).ljust(SECTOR, b"\0")


def _pad(data: bytes) -> bytes:
    rem = len(data) % SECTOR
    return data if rem == 0 else data + bytes(SECTOR - rem)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) byte ranges holding data, from SEEK_DATA/SEEK_HOLE; the whole file if unsupported."""
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end))
            pos = end
    except (OSError, AttributeError):
        return [(0, size)] if size else []
    return extents


def grain_runs(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merged [first, last) grain index ranges covering the data extents."""
    runs: list[tuple[int, int]] = []
    for start, end in extents:
        first, last = start // GRAIN, -(-end // GRAIN)
        if runs and first <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], last))
        else:
            runs.append((first, last))
    return runs


def nonzero_grains(fd: int, size: int) -> Iterator[tuple[int, bytes, int]]:
    """(grain index, 64 KiB of data, bytes of the disk covered so far) for each grain that is not all zero."""
    for first, last in grain_runs(data_extents(fd, size)):
        for chunk_start in range(first, last, CHUNK_GRAINS):
            chunk_end = min(chunk_start + CHUNK_GRAINS, last)
            data = os.pread(fd, (chunk_end - chunk_start) * GRAIN, chunk_start * GRAIN)
            for index in range(chunk_start, chunk_end):
                grain = data[(index - chunk_start) * GRAIN : (index - chunk_start + 1) * GRAIN]
                if len(grain) < GRAIN:
                    # The last grain is padded: readers (qemu's too) expect whole grains.
                    grain = grain.ljust(GRAIN, b"\0")
                if grain != _ZERO_GRAIN:
                    yield index, grain, min((index + 1) * GRAIN, size)


class _HashingWriter:
    """Sequential writer that counts sectors and hashes what it writes."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes) -> int:
        """Write sector-padded data; return the sector it started at."""
        assert len(data) % SECTOR == 0
        sector = self.offset // SECTOR
        self.fh.write(data)
        self.sha.update(data)
        self.offset += len(data)
        return sector


def write_stream_optimized(
    raw: Path,
    out: Path,
    *,
    adapter: str = "lsilogic",
    progress: Progress | None = None,
    level: int = DEFAULT_LEVEL,
    workers: int = 2,
) -> VmdkInfo:
    """Convert the raw disk `raw` into a streamOptimized VMDK at `out` (atomically)."""
    ddb_adapter = adapter if adapter in _ADAPTER_TYPES.values() else adapter_type(adapter)
    try:
        src = open(raw, "rb")  # noqa: SIM115 - closed below, with the temp file
    except OSError as exc:
        raise ApplianceError(f"{raw}: cannot read the raw disk: {exc.strerror or exc}") from None
    try:
        with src, atomic_writer(out) as dst, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            info = _convert(src, dst, out, ddb_adapter, progress, level, pool, 4 * max(1, workers))
    except OSError as exc:
        raise ApplianceError(f"{out}: cannot write the VMDK: {exc.strerror or exc}") from None
    log.debug("vmdk %s: %d grains, %d bytes", out, info.grains, info.file_size)
    return info


def _convert(
    src: BinaryIO,
    dst: BinaryIO,
    out: Path,
    adapter: str,
    progress: Progress | None,
    level: int,
    pool: ThreadPoolExecutor,
    in_flight: int,
) -> VmdkInfo:
    fd = src.fileno()
    st = os.fstat(fd)
    size = st.st_size
    if size == 0:
        raise ApplianceError(f"{src.name}: the raw disk is empty")
    capacity_sectors = -(-size // SECTOR)
    total_grains = -(-capacity_sectors // GRAIN_SECTORS)
    num_gts = -(-total_grains // GTES_PER_GT)
    # Deterministic CID: from the build's date, not the raw file's mtime, so two builds of one
    # commit give the same VMDK. 31 bits: some readers take ffffffff/fffffffe as "no parent".
    cid = (zlib.crc32(f"{out.name}:{size}:{env_epoch()}".encode()) & 0x7FFFFFFF) or 1
    descriptor = make_descriptor(out.name, capacity_sectors, adapter, cid).encode()
    if len(descriptor) > DESCRIPTOR_SECTORS * SECTOR:
        raise ApplianceError(f"{out}: descriptor too long ({len(descriptor)} bytes)")

    w = _HashingWriter(dst)
    w.write(pack_header(capacity_sectors, GD_AT_END))
    w.write(descriptor.ljust(DESCRIPTOR_SECTORS * SECTOR, b"\0"))

    gd = [0] * num_gts
    gt: list[int] = [0] * GTES_PER_GT
    gt_index = 0
    gt_used = False
    grains = 0

    def flush_gt() -> None:
        nonlocal gt, gt_used
        if gt_used:
            w.write(_marker(GT_SECTORS, MARKER_GT))
            gd[gt_index] = w.write(struct.pack(f"<{GTES_PER_GT}I", *gt))
        gt = [0] * GTES_PER_GT
        gt_used = False

    def emit(index: int, packed: bytes) -> None:
        nonlocal gt_index, gt_used, grains
        if index // GTES_PER_GT != gt_index:
            flush_gt()
            gt_index = index // GTES_PER_GT
        lba = index * GRAIN_SECTORS
        gt[index % GTES_PER_GT] = w.write(_pad(struct.pack("<QI", lba, len(packed)) + packed))
        gt_used = True
        grains += 1

    # A short pipeline: the workers deflate while this thread reads, skips zeros and writes in order;
    # a few grains per worker in flight keep them busy with bounded memory.
    pending: deque[tuple[int, Future[bytes], int]] = deque()
    for index, grain, done in nonzero_grains(fd, size):
        pending.append((index, pool.submit(zlib.compress, grain, level), done))
        while len(pending) > in_flight:
            first, future, first_done = pending.popleft()
            emit(first, future.result())
            if progress:
                progress(first_done, size)
    while pending:
        first, future, first_done = pending.popleft()
        emit(first, future.result())
        if progress:
            progress(first_done, size)
    flush_gt()

    gd_bytes = _pad(struct.pack(f"<{num_gts}I", *gd))
    w.write(_marker(len(gd_bytes) // SECTOR, MARKER_GD))
    gd_offset = w.write(gd_bytes)
    w.write(_marker(1, MARKER_FOOTER))
    w.write(pack_header(capacity_sectors, gd_offset))
    w.write(_marker(0, MARKER_EOS))
    if progress:
        progress(size, size)
    return VmdkInfo(
        path=out,
        capacity=capacity_sectors * SECTOR,
        populated_size=grains * GRAIN,
        file_size=w.offset,
        sha256=w.sha.hexdigest(),
        grains=grains,
    )


# ---------------------------------------------------------------------------------------------
# Reading back: used by tests and `appliance` checks to prove the stream matches the raw disk.


@dataclass(frozen=True)
class Header:
    """A parsed SparseExtentHeader."""

    magic: int
    version: int
    flags: int
    capacity: int  # sectors
    grain_size: int  # sectors
    descriptor_offset: int
    descriptor_size: int
    gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    overhead: int
    unclean_shutdown: int
    newline_chars: bytes
    compress_algorithm: int


@dataclass(frozen=True)
class Record:
    """One structure met walking the stream: kind is grain, gt, gd, footer or eos."""

    kind: str
    sector: int  # where its marker starts
    val: int  # LBA for grains, sector count for metadata
    size: int  # compressed bytes for grains


def parse_header(data: bytes) -> Header:
    """Parse a 512-byte header (or footer); ValueError if it is short or has a bad magic."""
    if len(data) < _HEADER.size:
        raise ValueError(f"a header needs {_HEADER.size} bytes, got {len(data)}")
    header = Header(*_HEADER.unpack_from(data))
    if header.magic != MAGIC:
        raise ValueError(f"bad magic {header.magic:#x}")
    return header


def _fail(path: Path, problem: str) -> ApplianceError:
    return ApplianceError(f"{path}: not a valid streamOptimized VMDK: {problem}")


_CORRUPT = (struct.error, zlib.error, UnicodeDecodeError, ValueError, OverflowError)


def _damaged(path: Path, exc: Exception) -> ApplianceError:
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return ApplianceError(f"{path}: cannot read: {exc.strerror}")
    # Other OSErrors here come from seeks past any sane offset, i.e. damaged pointers.
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return _fail(path, f"damaged ({detail})")


def _check_layout(header: Header, path: Path) -> None:
    # Bounds first: a damaged header must give an error, not a division by zero or a huge read.
    def pow2(n: int) -> bool:
        return n > 0 and n & (n - 1) == 0

    if not (pow2(header.grain_size) and header.grain_size <= 128 and pow2(header.gtes_per_gt)):
        raise _fail(path, f"grain size {header.grain_size}, {header.gtes_per_gt} entries per grain table")
    if not 0 < header.capacity <= (1 << 32) * header.grain_size or header.descriptor_size > 4096:
        raise _fail(path, f"capacity {header.capacity} sectors, descriptor {header.descriptor_size} sectors")


class _Window(io.RawIOBase):
    """A read-only slice [offset, offset+size) of a file, e.g. a VMDK inside an OVA."""

    def __init__(self, path: Path, offset: int, size: int | None) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._base = offset
        self._size = os.fstat(self._fh.fileno()).st_size - offset if size is None else size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(base + pos, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = max(min(len(buffer), self._size - self._pos), 0)
        data = os.pread(self._fh.fileno(), want, self._base + self._pos) if want else b""
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


def _open(path: Path, offset: int, size: int | None) -> BinaryIO:
    if offset == 0 and size is None:
        return open(path, "rb")
    return io.BufferedReader(_Window(path, offset, size))


def walk_stream(path: Path, *, offset: int = 0, size: int | None = None) -> tuple[Header, str, list[Record]]:
    """Walk the file (or a slice) front to back as a streaming importer does: header, descriptor, records."""
    try:
        return _walk(path, offset, size)
    except (*_CORRUPT, OSError) as exc:
        raise _damaged(path, exc) from None


def _walk(path: Path, offset: int, size: int | None) -> tuple[Header, str, list[Record]]:
    with _open(path, offset, size) as fh:
        header = parse_header(fh.read(SECTOR))
        _check_layout(header, path)
        fh.seek(header.descriptor_offset * SECTOR)
        descriptor = fh.read(header.descriptor_size * SECTOR).rstrip(b"\0").decode()
        records: list[Record] = []
        sector = header.overhead
        kinds = {MARKER_EOS: "eos", MARKER_GT: "gt", MARKER_GD: "gd", MARKER_FOOTER: "footer"}
        while True:
            fh.seek(sector * SECTOR)
            raw = fh.read(SECTOR)
            if len(raw) < _MARKER.size:
                raise _fail(path, f"stream ends at sector {sector} without an end-of-stream marker")
            val, packed_size, kind = _MARKER.unpack_from(raw)
            if packed_size:
                records.append(Record("grain", sector, val, packed_size))
                sector += -(-(12 + packed_size) // SECTOR)
                continue
            if kind not in kinds:
                raise _fail(path, f"unknown marker type {kind} at sector {sector}")
            records.append(Record(kinds[kind], sector, val, 0))
            if kind == MARKER_EOS:
                return header, descriptor, records
            sector += 1 + val


def read_footer(path: Path, *, offset: int = 0, size: int | None = None) -> Header:
    """The footer header (the header copy just before the end-of-stream marker)."""
    try:
        return _footer(path, offset, size)
    except (*_CORRUPT, OSError) as exc:
        raise _damaged(path, exc) from None


def _footer(path: Path, offset: int, size: int | None) -> Header:
    with _open(path, offset, size) as fh:
        end = fh.seek(0, os.SEEK_END)
        if end < 4 * SECTOR or end % SECTOR:
            raise _fail(path, f"{end} bytes is not a whole number of sectors holding a header and footer")
        fh.seek(end - 3 * SECTOR)
        tail = fh.read(3 * SECTOR)
    _val, marker_size, kind = _MARKER.unpack_from(tail)
    if marker_size != 0 or kind != MARKER_FOOTER:
        raise _fail(path, "no footer marker before the end-of-stream marker")
    if _MARKER.unpack_from(tail, 2 * SECTOR) != (0, 0, MARKER_EOS):
        raise _fail(path, "no end-of-stream marker at the end")
    footer = parse_header(tail[SECTOR : 2 * SECTOR])
    _check_layout(footer, path)
    return footer


def read_stream_optimized(path: Path, *, offset: int = 0, size: int | None = None) -> Iterator[bytes]:
    """The disk's contents, grain by grain, found through the footer's GD and the GTs."""
    try:
        yield from _read_grains(path, offset, size)
    except (*_CORRUPT, OSError) as exc:
        raise _damaged(path, exc) from None


def _read_grains(path: Path, offset: int, size: int | None) -> Iterator[bytes]:
    footer = read_footer(path, offset=offset, size=size)
    with _open(path, offset, size) as fh:
        header = parse_header(fh.read(SECTOR))
    # The footer is the header again with gdOffset filled in; anything else differing is damage.
    if dataclasses.replace(header, gd_offset=footer.gd_offset) != footer:
        raise _fail(path, "the footer does not repeat the header")
    if footer.flags != FLAGS or footer.compress_algorithm != COMPRESS_DEFLATE:
        raise _fail(path, f"flags {footer.flags:#x}, compression {footer.compress_algorithm}")
    grain_bytes = footer.grain_size * SECTOR
    total = footer.capacity * SECTOR
    num_grains = -(-footer.capacity // footer.grain_size)
    num_gts = -(-num_grains // footer.gtes_per_gt)
    with _open(path, offset, size) as fh:
        fh.seek(footer.gd_offset * SECTOR)
        gd = struct.unpack(f"<{num_gts}I", fh.read(num_gts * 4))
        done = 0
        for gt_index, gt_sector in enumerate(gd):
            if gt_sector:
                fh.seek(gt_sector * SECTOR)
                gt = struct.unpack(f"<{footer.gtes_per_gt}I", fh.read(footer.gtes_per_gt * 4))
            else:
                gt = (0,) * footer.gtes_per_gt
            for entry_index, grain_sector in enumerate(gt):
                index = gt_index * footer.gtes_per_gt + entry_index
                if index >= num_grains:
                    break
                want = min(grain_bytes, total - done)
                if grain_sector == 0:
                    yield bytes(want)
                else:
                    fh.seek(grain_sector * SECTOR)
                    lba, packed_size = struct.unpack("<QI", fh.read(12))
                    if lba != index * footer.grain_size:
                        raise _fail(
                            path,
                            f"grain at sector {grain_sector} has LBA {lba}, expected "
                            f"{index * footer.grain_size}",
                        )
                    # Bounded: a damaged grain must not inflate without limit.
                    grain = zlib.decompressobj().decompress(fh.read(packed_size), grain_bytes + 1)
                    if len(grain) != grain_bytes:
                        raise _fail(path, f"grain {index} inflates to {len(grain)} bytes")
                    yield grain[:want]
                done += want


def compare_with_raw(vmdk: Path, raw: Path) -> int:
    """Check the VMDK reads back identical to `raw` (zero padding after it); returns bytes compared."""
    offset = 0
    with open(raw, "rb") as fh:
        for grain in read_stream_optimized(vmdk):
            want = fh.read(len(grain))
            if grain[: len(want)] != want or any(grain[len(want) :]):
                raise ApplianceError(f"{vmdk}: differs from {raw} in the grain at byte {offset}")
            offset += len(grain)
        if fh.read(1):
            raise ApplianceError(f"{vmdk}: shorter than {raw} ({offset} bytes)")
    return offset
