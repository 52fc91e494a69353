"""The gateway as the image ships it, for the relay benchmarks.

The appliance runs `/usr/bin/gateway` on the image's own Python (trixie's 3.13), with the C
accelerators compiled for it and Debian's aiohttp, not on the build host's venv. The relay
benchmarks measure that: they start the gateway inside the built image's root file system.

How: in a private mount namespace (`unshare --mount`, so every mount ends with the process), the
raw disk's root-a partition is mounted read-only from a loop device, an overlay over it takes
the few writes, the benchmark's work dir is bound at its own path inside (the gateway's config,
identity and audit log live there), /proc and /dev are bound, and `chroot` runs the image's
`/usr/bin/gateway` with the unit's environment. The process keeps its PID through each exec, so
the benchmarks count its CPU and memory as for the venv's gateway. The systemd sandbox is not
applied: its seccomp filter costs a few tens of nanoseconds per system call.

It needs root (loop devices, mounts, chroot) and an image built from this checkout (`make ova`).
`auto` takes the image when both hold and no source under gateway/ or gwcore/ is newer than it,
and falls back to the venv otherwise, saying why.

    python bench/shipped.py [--raw build/gateway-0.1.0.raw] WORK -- run --config WORK/gateway.yaml

runs the image's gateway by hand (WORK: the directory its files are under), as the shared
harness's relays.json does for the `ours-image` entry (docs/relay-performance.md).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.bundle import ROOT_LABEL, partitions  # noqa: E402

# Runs as root inside the new mount namespace; $1..$5 are the image, the partition's offset and
# size, a scratch dir for the mount points and the work dir; the rest is the gateway's command line.
_SCRIPT = r"""
set -eu
raw=$1 offset=$2 size=$3 mnt=$4 work=$5
shift 5
mkdir -p "$mnt/lower" "$mnt/rw" "$mnt/root"
mount -o ro,loop,offset="$offset",sizelimit="$size" "$raw" "$mnt/lower"
mount -t tmpfs -o size=64m,mode=0700 tmpfs "$mnt/rw"
mkdir "$mnt/rw/upper" "$mnt/rw/work"
mount -t overlay overlay -o "lowerdir=$mnt/lower,upperdir=$mnt/rw/upper,workdir=$mnt/rw/work" "$mnt/root"
mkdir -p "$mnt/root$work"
mount --bind "$work" "$mnt/root$work"
mount -t proc proc "$mnt/root/proc"
mount --bind /dev "$mnt/root/dev"
exec chroot "$mnt/root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 /usr/bin/gateway "$@"
"""


@dataclass(frozen=True)
class Gateway:
    """How a benchmark starts the gateway: the command line before `run --config ...`, and a
    line for the report that says which gateway it is."""

    prefix: tuple[str, ...]
    label: str

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, *args]


VENV = Gateway((sys.executable, "-m", "gateway"), f"the venv's (Python {sys.version.split()[0]})")


def newest_raw(repo: Path = REPO) -> Path | None:
    """The raw disk of the last `make ova` (build/NAME-VERSION.raw), if there is one."""
    found = sorted((repo / "build").glob("*.raw"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


# The packages whose code the image's gateway runs (the wheel's, and the accelerators built from them).
_SHIPPED = ("gateway", "gwcore")


def _stale_source(raw: Path, repo: Path = REPO) -> Path | None:
    """A source file of the gateway or the core newer than the image, if any: then the image runs
    older code."""
    built = raw.stat().st_mtime
    for package in _SHIPPED:
        for path in sorted((repo / package).rglob("*")):
            if path.suffix in (".py", ".c", ".yaml") and path.stat().st_mtime > built:
                return path
    return None


def _image_python(raw: Path) -> str:
    """The image's Python and its version, from the package lock beside the raw disk."""
    lock = raw.parent / "packages.lock"
    if lock.exists():
        for line in lock.read_text().splitlines():
            fields = line.split("\t")
            name = fields[0]
            if len(fields) > 1 and name.startswith("python3.") and name[len("python3.") :].isdigit():
                return f"Python {fields[1].split('-')[0]}"
    return "Python 3"


def image(raw: Path, work: Path, env: tuple[str, ...] = ()) -> Gateway:
    """The image's gateway, for a run whose files are all under `work` (an absolute path); `env`:
    more NAME=value settings for its environment (a measurement's, such as PYTHONPERFSUPPORT=1)."""
    for setting in env:
        if re.fullmatch(r"[A-Z][A-Z0-9_]*=[A-Za-z0-9_.,:/-]*", setting) is None:
            raise SystemExit(f"shipped: environment setting {setting!r}: expected NAME=value, plain")
    found = [p for p in partitions(raw) if p.name == ROOT_LABEL]
    if len(found) != 1:
        raise SystemExit(f"{raw}: expected one partition labelled {ROOT_LABEL}, found {len(found)}")
    part = found[0]
    mnt = work / ".image-root"
    script = _SCRIPT.replace("PYTHONUNBUFFERED=1", " ".join(("PYTHONUNBUFFERED=1", *env)))
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "gateway-image")
    args = (str(raw.resolve()), str(part.offset), str(part.size), str(mnt), str(work.resolve()))
    rel = raw.relative_to(REPO) if raw.is_relative_to(REPO) else raw
    return Gateway((*prefix, *args), f"the image's ({_image_python(raw)}, {rel})")


def choose(kind: str, work: Path, raw: Path | None = None, env: tuple[str, ...] = ()) -> Gateway:
    """`venv`, `image` (an error if it cannot run) or `auto` (the image when it can run and is
    not older than the sources, else the venv, with the reason in the label)."""
    if kind == "venv":
        return VENV
    raw = raw or newest_raw()
    why = None
    if raw is None:
        why = "no build/*.raw: run make ova"
    elif os.geteuid() != 0:
        why = "the image needs root for its mounts"
    elif shutil.which("unshare") is None:
        why = "no unshare(1)"
    if why is not None:
        if kind == "image":
            raise SystemExit(f"--gateway image: {why}")
        return Gateway(VENV.prefix, f"{VENV.label}; not the image: {why}")
    assert raw is not None
    stale = _stale_source(raw)
    if stale is not None and kind == "auto":
        why = f"{stale.relative_to(REPO)} is newer than {raw.name}: run make ova"
        return Gateway(VENV.prefix, f"{VENV.label}; not the image: {why}")
    return image(raw, work, env)


def main() -> None:
    parser = argparse.ArgumentParser(description="run the image's gateway (see the module's text)")
    parser.add_argument("--raw", type=Path, default=None, help="the raw disk (default: newest build/*.raw)")
    parser.add_argument("work", type=Path, help="the directory that holds the gateway's files")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- and the gateway's arguments")
    opts = parser.parse_args()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    gateway = choose("image", opts.work.resolve(), opts.raw)
    argv = gateway.argv(*args)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
