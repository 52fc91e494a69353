"""Inputs that make two builds of one commit give the same bytes: the build's date and its environment.

Every tool in the build that writes a time (pip's wheel, mkosi's mtime clamp, systemd-repart and
mkfs, mkinitramfs, the OVA's tar) reads it from SOURCE_DATE_EPOCH, and the build sets that from the
commit it builds, never from the wall clock. See docs/reproducible-builds.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.lock import Package, apt_preferences

log = logging.getLogger(__name__)

# What the image's tools read besides SOURCE_DATE_EPOCH: e2fsprogs (mkfs.ext4 under systemd-repart)
# takes its clock from E2FSPROGS_FAKE_TIME; the fixed locale and time zone keep sort orders and
# any formatted dates out of the host's settings.
FIXED_ENV = {"TZ": "UTC", "LC_ALL": "C.UTF-8"}
_HASH_SEED_NAMESPACE = uuid.UUID("6f1d3a52-9b0e-4c1f-8e27-5d4a7c9b0e13")


def parse_epoch(text: str, where: str) -> int:
    """A SOURCE_DATE_EPOCH value: whole seconds since 1970, not negative."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ApplianceError(
            f"{where}: expected an integer number of seconds, got {text.strip()!r}"
        ) from None
    if value < 0:
        raise ApplianceError(f"{where}: expected a number of seconds >= 0, got {value}")
    return value


def source_date_epoch(repo: Path, environ: dict[str, str] | None = None) -> int:
    """The build's date: $SOURCE_DATE_EPOCH if set, else the commit time of the checkout's HEAD."""
    env = os.environ if environ is None else environ
    if "SOURCE_DATE_EPOCH" in env:
        return parse_epoch(env["SOURCE_DATE_EPOCH"], "SOURCE_DATE_EPOCH")
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%ct", "HEAD"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        proc = None
    if proc is None or proc.returncode != 0 or not proc.stdout.strip():
        raise ApplianceError(
            f"{repo}: not a git checkout, so the build has no date to use",
            hint="set SOURCE_DATE_EPOCH to the release's date in seconds (e.g. the source tarball's)",
        )
    return parse_epoch(proc.stdout, f"{repo}: git log")


def env_epoch() -> int:
    """SOURCE_DATE_EPOCH from this process's environment, or 0 (1970) when unset; never the clock."""
    return parse_epoch(os.environ.get("SOURCE_DATE_EPOCH", "0"), "SOURCE_DATE_EPOCH")


def ext4_hash_seed(image: str, version: str) -> str:
    """The htree hash seed of the image's ext4 filesystems: fixed per image and version, not random."""
    return str(uuid.uuid5(_HASH_SEED_NAMESPACE, f"{image}:{version}"))


def mkfs_environment(hash_seed: str) -> dict[str, str]:
    """The mkfs options systemd-repart appends to its own (SYSTEMD_REPART_MKFS_OPTIONS_<FS>).

    mke2fs keeps only the last -E, so repart's own extended options (repart 254: discard,
    lazy_itable_init=1) are repeated with the hash seed. mkfs.vfat --invariant fixes the volume id
    (1234-ABCD) and the volume label's time, which dosfstools 4.2 takes from the clock.
    """
    return {
        "SYSTEMD_REPART_MKFS_OPTIONS_EXT4": f"-E discard,lazy_itable_init=1,hash_seed={hash_seed}",
        "SYSTEMD_REPART_MKFS_OPTIONS_VFAT": "--invariant",
    }


def build_environment(epoch: int, hash_seed: str) -> dict[str, str]:
    """The variables every tool of the build runs with."""
    return {
        **FIXED_ENV,
        "SOURCE_DATE_EPOCH": str(epoch),
        "E2FSPROGS_FAKE_TIME": str(epoch),
        **mkfs_environment(hash_seed),
    }


def _dirty(repo: Path) -> bool:
    proc = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)  # fmt: skip
    return proc.returncode == 0 and bool(proc.stdout.strip())


def cache_key(epoch: int, pins: Sequence[Package]) -> str:
    """The incremental cache's key: the build's date and the package pins, which mkosi does not check."""
    pinned = hashlib.sha256(apt_preferences(pins).encode()).hexdigest()[:12] if pins else "unpinned"
    return f"{epoch}-{pinned}"


def prune_caches(current: Path, max_age: float = 2 * 86400) -> None:
    """Mark current's cache as used and delete its siblings unused for max_age seconds.

    Each key's cache is a whole image tree (~600 MB). Builds of other commits share the parent
    (other checkouts on one host), so only caches nobody used for two days go.
    """
    current.mkdir(parents=True, exist_ok=True)
    os.utime(current)
    now = time.time()
    for sibling in current.parent.iterdir():
        if sibling != current and sibling.is_dir() and now - sibling.stat().st_mtime > max_age:
            log.info("removing the unused incremental cache %s", sibling)
            shutil.rmtree(sibling, ignore_errors=True)


def reproducible_environment() -> dict[str, str]:
    """The variables apply_build_environment() set, as now in force (for mkosi's Environment=)."""
    keys = ("SOURCE_DATE_EPOCH", "E2FSPROGS_FAKE_TIME", *FIXED_ENV, *mkfs_environment("").keys())
    return {key: os.environ[key] for key in keys if key in os.environ}


def apply_build_environment(repo: Path, image: str, version: str) -> int:
    """Set the build's reproducibility variables in this process (every tool it runs inherits them).

    Returns the SOURCE_DATE_EPOCH in force. A checkout with uncommitted changes still builds, with
    a warning: its artifacts are not the commit's.
    """
    epoch = source_date_epoch(repo)
    os.environ.update(build_environment(epoch, ext4_hash_seed(image, version)))
    log.info("SOURCE_DATE_EPOCH=%d (%s)", epoch, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)))
    if _dirty(repo):
        log.warning("%s has uncommitted changes: this build is not reproducible from the commit", repo)
    return epoch
