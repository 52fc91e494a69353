"""What a build records about itself: the package lock, the SBOM and the wheel, next to the disks.

Reads the image's dpkg database (exported by appliance/scripts/export-packages.finalize), hashes
the .debs still in the package cache, and writes `packages.lock` and `sbom.cdx.json` into the
output directory with a copy of the wheel the image was built from. With a lock given, it also
checks that every locked package was installed at its locked version.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.lock import (
    LOCK_NAME,
    Package,
    compare,
    drift_error,
    format_lock,
    parse_dpkg_status,
    with_hashes,
)
from appliance.render import FINALIZE_SCRIPT
from appliance.sbom import SBOM_NAME, Wheel, make_sbom
from appliance.spec import Spec
from gwcore.atomic import write_atomic

log = logging.getLogger(__name__)

DPKG_STATUS = "dpkg-status"  # the name the finalize script gives its copy in mkosi's output


@dataclass(frozen=True)
class Records:
    """The files record_build() wrote into the output directory."""

    lock: Path
    sbom: Path
    wheel: Path


def deb_hashes(archives: Path, packages: Iterable[Package]) -> dict[str, str]:
    """{deb filename: sha256} for the packages whose .deb apt's cache still holds."""
    hashes = {}
    for pkg in packages:
        deb = archives / pkg.deb_filename
        try:
            with open(deb, "rb") as fh:
                hashes[pkg.deb_filename] = hashlib.file_digest(fh, "sha256").hexdigest()
        except FileNotFoundError:
            continue  # the incremental cache spared apt the download, and the cache was pruned since
        except OSError as exc:
            raise ApplianceError(f"{deb}: cannot hash: {exc.strerror or exc}") from None
    return hashes


def wheel_record(path: Path) -> Wheel:
    """Name, version and SHA-256 of a wheel, from its file name (PEP 427)."""
    parts = path.name.removesuffix(".whl").split("-")
    if len(parts) < 5:
        raise ApplianceError(f"{path}: not a wheel file name (NAME-VERSION-PY-ABI-PLATFORM.whl)")
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return Wheel(parts[0].replace("_", "-"), parts[1], path.name, digest)


def _write(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def record_build(
    spec: Spec,
    *,
    dpkg_status: Path,
    archives: Path,
    wheel: Path,
    output: Path,
    epoch: int,
    locked: list[Package] | None = None,
    lock_source: Path | None = None,
) -> Records:
    """Write the lock, the SBOM and the wheel into output; fail if a pinned package drifted."""
    try:
        status = dpkg_status.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = getattr(exc, "strerror", None) or exc
        raise ApplianceError(f"{dpkg_status}: cannot read the image's dpkg database: {problem}",
                             hint=f"mkosi should have run {FINALIZE_SCRIPT}") from None  # fmt: skip
    installed = parse_dpkg_status(status, str(dpkg_status))
    if locked is not None:
        drift = compare(locked, installed)
        if drift.changed:
            raise drift_error(lock_source or Path(LOCK_NAME), drift)
        for pkg in drift.added:
            log.info("not in the lock, installed as new: %s %s", pkg.name, pkg.version)
        for pkg in drift.removed:
            log.info("in the lock, no longer installed: %s %s", pkg.name, pkg.version)
    packages = with_hashes(installed, deb_hashes(archives, installed))
    missing = sum(1 for p in packages if p.sha256 == "-")
    if missing:
        log.info(
            "%d of %d .debs were not in the package cache: their hashes are left out", missing, len(packages)
        )
    stem = f"{spec.name} {spec.version}"
    lock = output / LOCK_NAME
    _write(lock, format_lock(packages, image=stem, release=str(spec.debian_release)))
    wheel_out = output / wheel.name
    shutil.copyfile(wheel, wheel_out)
    sbom = output / SBOM_NAME
    _write(
        sbom,
        make_sbom(
            image=spec.name,
            version=spec.version,
            release=str(spec.debian_release),
            packages=packages,
            wheel=wheel_record(wheel_out),
            epoch=epoch,
        ),
    )
    log.info("%s: %d Debian packages; %s", lock, len(packages), sbom)
    return Records(lock, sbom, wheel_out)
