"""Benchmark the streamOptimized VMDK writer: speed and size for a few zlib levels.

Usage: .venv/bin/python bench/vmdk.py [RAW] [--levels 1,3,6,9] [--workers 1,2] [--qemu]
Without RAW it uses build/mkosi.output/*.raw, else a generated 256 MiB sample (text, binaries, holes).
Prints one row per (level, workers): seconds, MiB/s of data read, output MiB and ratio to the data.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.vmdk import data_extents, write_stream_optimized

MIB = 1024 * 1024


def make_sample(path: Path, size: int = 256 * MIB) -> None:
    """A sparse disk with system files (compressible like a root fs), random data and holes."""
    rng = random.Random(1)
    sources = sorted(p for p in Path("/usr/lib").rglob("*") if p.is_file() and not p.is_symlink())[:4000]
    with open(path, "wb") as out:
        out.truncate(size)
        pos = MIB
        for src in sources:
            if pos > size * 3 // 4:
                break
            try:
                data = src.read_bytes()
            except OSError:
                continue
            out.seek(pos)
            out.write(data)
            pos += len(data) + rng.choice((0, 4096, 65536, MIB))
        out.seek(size - 8 * MIB)
        out.write(rng.randbytes(4 * MIB))  # incompressible, like already-compressed files


def allocated(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(end - start for start, end in data_extents(fh.fileno(), os.fstat(fh.fileno()).st_size))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", nargs="?", type=Path)
    parser.add_argument("--levels", default="1,3,6,9")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--qemu", action="store_true", help="also time qemu-img's streamOptimized output")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-vmdk-") as tmpdir:
        tmp = Path(tmpdir)
        raw = args.raw
        if raw is None:
            built = sorted(Path("build/mkosi.output").glob("*.raw"))
            raw = built[0] if built else tmp / "sample.raw"
            if not built:
                make_sample(raw)
        size, data = raw.stat().st_size, allocated(raw)
        print(f"raw {raw}: {size / MIB:.0f} MiB virtual, {data / MIB:.0f} MiB allocated")
        print(
            f"{'level':>5} {'workers':>7} {'seconds':>8} {'MiB/s':>8} {'out MiB':>8} {'out/data':>8} "
            f"{'grains MiB':>10}"
        )
        for level in (int(x) for x in args.levels.split(",")):
            for workers in (int(x) for x in args.workers.split(",")):
                out = tmp / "bench.vmdk"
                start = time.perf_counter()
                info = write_stream_optimized(raw, out, level=level, workers=workers)
                seconds = time.perf_counter() - start
                print(
                    f"{level:>5} {workers:>7} {seconds:>8.1f} {data / MIB / seconds:>8.1f} "
                    f"{info.file_size / MIB:>8.1f} {info.file_size / data:>8.3f} "
                    f"{info.populated_size / MIB:>10.1f}"
                )
                out.unlink()
        if args.qemu and shutil.which("qemu-img"):
            out = tmp / "qemu.vmdk"
            start = time.perf_counter()
            subprocess.run(
                ["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(out)],
                check=True,
            )
            seconds = time.perf_counter() - start
            size_out = out.stat().st_size
            print(f"qemu-img (level 6-ish, no markers): {seconds:.1f} s, {size_out / MIB:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
