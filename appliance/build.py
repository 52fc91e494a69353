"""The build: spec -> wheel -> mkosi image -> bootable raw disk -> qcow2 and OVA -> SHA256SUMS."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle import build_bundle, write_update_config
from appliance.errors import ApplianceError
from appliance.lock import load_lock
from appliance.log import complete_step
from appliance.ova import build_ova, write_sha256sums
from appliance.progress import TerminalProgress
from appliance.provenance import DPKG_STATUS, record_build
from appliance.render import BuildPaths, render_mkosi
from appliance.repro import apply_build_environment, cache_key, prune_caches, reproducible_environment
from appliance.run import find_tool, run
from appliance.signing import resolve_signer, sign_file
from appliance.spec import Spec

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
IMAGE_TREE = REPO / "image"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ESP_PARTITION = 2  # the order of image/mkosi.repart/
MIN_MKOSI = 24
# Compiled code in any packaging of it. The wheel is pure Python (py3-none-any): it installs on the
# image's Python whatever the build host's is. The C accelerators are compiled for the image's own
# python3 by image/mkosi.build.chroot; a module built for the host's venv (`make venv` puts it next
# to its source) would not even load there.
COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")


@dataclass(frozen=True)
class Artifacts:
    """The files a build leaves in the output directory."""

    raw: Path
    qcow2: Path
    ova: Path
    kernel: Path
    sums: Path
    lock: Path
    sbom: Path
    wheel: Path
    bundle: Path | None = None  # the signed update bundle (appliance/bundle.py)
    sums_sig: Path | None = None


def check_host() -> None:
    """Fail early, in one line, when the build host lacks a tool or the right mkosi."""
    for tool in ("mkosi", "qemu-img", "sfdisk", "grub-bios-setup", "rauc", "mksquashfs", "openssl"):
        find_tool(tool)
    version = run(["mkosi", "--version"], capture=True).stdout.strip()
    match = re.search(r"mkosi (\d+)", version)
    if not match or int(match.group(1)) < MIN_MKOSI:
        raise ApplianceError(f"mkosi {MIN_MKOSI} or newer is required, found {version!r}",
                             hint="install mkosi from bookworm-backports, or run 'make setup'")  # fmt: skip
    if os.geteuid() != 0:
        raise ApplianceError("the image build must run as root (mkosi, grub-bios-setup)", hint="use sudo")


def build_wheel(paths: BuildPaths) -> Path:
    """Build the project's wheel into the directory mkosi mounts for the image's post-install script."""
    if paths.work.exists():
        shutil.rmtree(paths.work)
    paths.work.mkdir(parents=True)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--wheel-dir", paths.work, REPO], capture=True)  # fmt: skip
    wheels = list(paths.work.glob("*.whl"))
    if len(wheels) != 1:
        raise ApplianceError(f"{paths.work}: expected one wheel, found {len(wheels)}")
    check_pure_wheel(wheels[0])
    return wheels[0]


def check_pure_wheel(wheel: Path) -> None:
    """Fail, naming the members, if the wheel carries compiled code."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ApplianceError(f"{wheel}: cannot read the wheel: {exc}") from None
    compiled = sorted(n for n in names if n.endswith(COMPILED_SUFFIXES) or ".so." in n.rsplit("/", 1)[-1])
    if compiled:
        raise ApplianceError(
            f"{wheel}: the wheel must be pure Python, but it carries compiled code: {', '.join(compiled)}",
            hint="the image compiles the C accelerators itself (image/mkosi.build.chroot); see docs/image.md",
        )


def run_mkosi(spec: Spec, conf: Path, paths: BuildPaths, *, incremental: bool = True) -> Path:
    """Run mkosi over image/ with the generated config; return the raw disk it wrote."""
    paths.incremental_cache(spec).mkdir(parents=True, exist_ok=True)
    paths.package_cache.mkdir(parents=True, exist_ok=True)
    debug = ["--debug"] if log.isEnabledFor(logging.DEBUG) else []
    # --incremental=no: build the tree from the packages again, for a second build that must not
    # share the first one's cached image (tests/vm/test_reproducible.py).
    fresh = [] if incremental else ["--incremental=no"]
    run(["mkosi", *debug, "--directory", IMAGE_TREE, "--include", conf, *fresh, "--force", "build"])
    raw = paths.mkosi_output / f"{spec.artifact_stem}.raw"
    if not raw.exists():
        raise ApplianceError(f"mkosi finished but {raw} is missing")
    return raw


def install_bios_boot(raw: Path, boot_img: Path, core_img: Path) -> None:
    """Write grub's boot.img to the MBR and core.img to the BIOS boot partition.

    grub-bios-setup insists on finding the block device behind its --directory; like mkosi, we
    show it a mountinfo in which the image file is that device, so no loop device is needed.
    """
    setup = find_tool("grub-bios-setup")
    with tempfile.TemporaryDirectory(prefix="grub-") as tmp:
        grub_dir = Path(tmp) / "i386-pc"
        grub_dir.mkdir()
        shutil.copy(boot_img, grub_dir / "boot.img")
        shutil.copy(core_img, grub_dir / "core.img")
        mountinfo = Path(tmp) / "mountinfo"
        mountinfo.write_text(f"1 0 1:1 / / - fat {raw.resolve()}\n")
        script = 'mount --bind "$1" /proc/$$/mountinfo && shift && exec "$@"'
        run(["unshare", "--mount", "sh", "-c", script, "sh", mountinfo, setup,
             f"--directory={grub_dir}", raw.resolve()], capture=True)  # fmt: skip


def finish_disk(spec: Spec, built: Path, paths: BuildPaths) -> Path:
    """Turn mkosi's raw output into the bootable disk artifact of the spec's size."""
    raw = paths.output / f"{spec.artifact_stem}.raw"
    os.replace(built, raw)
    size = spec.hardware.disk_gib * 1024**3
    if raw.stat().st_size > size:
        raise ApplianceError(f"{spec.source}: hardware.disk_gib: the image needs {raw.stat().st_size} bytes, "
                             f"more than {spec.hardware.disk_gib} GiB")  # fmt: skip
    # A sparse file: the empty space costs nothing here or in the VMDK. First boot's
    # systemd-repart fills it (root slot B, a larger /var).
    os.truncate(raw, size)
    run(["sfdisk", "--quiet", "--relocate", "gpt-bak-std", raw], capture=True)
    run(["sfdisk", "--quiet", "--part-type", raw, str(ESP_PARTITION), ESP_TYPE], capture=True)
    install_bios_boot(raw, paths.mkosi_output / "grub-boot.img", paths.mkosi_output / "grub-core.img")
    return raw


def build(spec: Spec, output: Path, *, lock: Path | None = None, incremental: bool = True) -> Artifacts:
    """Build every artifact of the spec into output.

    lock: a packages.lock to install exactly (appliance/lock.py). incremental=False ignores mkosi's
    cached image and installs every package again (from the package cache where it can).
    """
    output.resolve().mkdir(parents=True, exist_ok=True)
    with complete_step(f"Building {spec.artifact_stem} ({spec.debian_release})"):
        check_host()
        # Every tool below (pip, mkosi, systemd-repart, mkfs, qemu-img, the OVA writer) inherits it.
        epoch = apply_build_environment(REPO, spec.name, spec.version)
        locked = load_lock(lock) if lock else None
        paths = BuildPaths(output.resolve(), cache_key=cache_key(epoch, locked or ()))
        prune_caches(paths.incremental_cache(spec))
        signer = resolve_signer(spec, paths.cache)
        with complete_step("Building the project wheel"):
            wheel = build_wheel(paths)
            write_update_config(spec, paths.work, signer)
        with complete_step("Rendering the mkosi configuration"):
            conf = render_mkosi(spec, paths, environment=reproducible_environment(), pins=locked or ())
        with complete_step("Building the image with mkosi"):
            built = run_mkosi(spec, conf, paths, incremental=incremental)
        with complete_step("Recording the packages (lock, SBOM)"):
            records = record_build(spec, dpkg_status=paths.mkosi_output / DPKG_STATUS,
                                   archives=paths.package_archives, wheel=wheel, output=paths.output,
                                   epoch=epoch, locked=locked, lock_source=lock)  # fmt: skip
        with complete_step("Making the disk bootable (BIOS and UEFI)"):
            raw = finish_disk(spec, built, paths)
            kernel = paths.output / f"{spec.artifact_stem}.vmlinuz"
            os.replace(paths.mkosi_output / "kernel", kernel)
        with complete_step("Converting to qcow2"):
            qcow2 = paths.output / f"{spec.artifact_stem}.qcow2"
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], capture=True)
        with complete_step("Packing the OVA"), TerminalProgress() as progress:
            ova = build_ova(spec, raw, paths.output, progress)
        with complete_step("Building the signed update bundle"):
            bundle = build_bundle(spec, raw, paths.output, signer)
        with complete_step("Writing SHA256SUMS"), TerminalProgress() as progress:
            listed = [raw, qcow2, ova, records.wheel, records.lock, records.sbom]
            sums = write_sha256sums(listed, paths.output / "SHA256SUMS", progress=progress)
        with complete_step("Signing SHA256SUMS"):
            # The bundle is not listed: SHA256SUMS names what two builds make byte for byte, and
            # RAUC salts a bundle's verity tree at random and dates its signature (docs/updates.md).
            sums_sig = sign_file(sums, signer)
    for path in (raw, qcow2, ova, bundle):
        log.info("%s: %.1f MiB on disk", path, path.stat().st_blocks * 512 / 2**20)
    return Artifacts(raw=raw, qcow2=qcow2, ova=ova, kernel=kernel, sums=sums,
                     lock=records.lock, sbom=records.sbom, wheel=records.wheel,
                     bundle=bundle, sums_sig=sums_sig)  # fmt: skip
