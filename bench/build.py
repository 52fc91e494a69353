"""Build benchmark: cold and warm build time, artifact sizes, boot to login, memory after boot.

Prints figures; asserts nothing. `--cold` also times a build with empty caches (it downloads
every package again). Run as root on the build host: python bench/build.py [--cold]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from appliance.build import build
from appliance.log import setup_logging
from appliance.qemu import BootOptions, accelerator
from appliance.smoke import smoke
from appliance.spec import Firmware, load_spec

REPO = Path(__file__).resolve().parents[1]


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def timed_build(spec_path: Path, out: Path, cache: Path | None = None) -> float:
    if cache is not None:
        os.environ["APPLIANCE_CACHE_DIR"] = str(cache)
    import importlib

    import appliance.render

    importlib.reload(appliance.render)  # the cache location is read at import time
    start = time.monotonic()
    build(load_spec(spec_path), out)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", action="store_true", help="also time a build with empty caches")
    parser.add_argument("--output", type=Path, default=REPO / "build")
    args = parser.parse_args()
    setup_logging(False)
    spec_path = REPO / "appliance.yaml"
    spec = load_spec(spec_path)
    rows: list[tuple[str, str]] = []

    if args.cold:
        with tempfile.TemporaryDirectory(prefix="bench-cold-cache-", dir="/var/tmp") as cache:
            rows.append(
                ("cold build (empty caches)", f"{timed_build(spec_path, args.output, Path(cache)):.0f} s")
            )
        os.environ.pop("APPLIANCE_CACHE_DIR", None)
    # Warm: what a developer waits for after changing Python code (the wheel is rebuilt each time).
    (REPO / "gateway" / "__init__.py").touch()
    rows.append(("warm rebuild after a Python change", f"{timed_build(spec_path, args.output):.0f} s"))

    raw = args.output / f"{spec.artifact_stem}.raw"
    qcow2, ova = raw.with_suffix(".qcow2"), raw.with_suffix(".ova")
    rows.append(("raw disk, used", mib(raw.stat().st_blocks * 512)))
    rows.append(("qcow2", mib(qcow2.stat().st_size)))
    rows.append(("OVA", mib(ova.stat().st_size)))

    accel = accelerator(None, raw)
    for firmware, image in ((Firmware.BIOS, ova), (Firmware.EFI, qcow2)):
        nic = str(spec.hardware.nic) if firmware == Firmware.BIOS else "virtio"
        disk = str(spec.hardware.disk_controller) if firmware == Firmware.BIOS else "virtio"
        result = smoke(BootOptions(image=image, firmware=firmware, disk=disk, nic=nic), version=spec.version)
        # The smoke check runs once boot jobs are done, usually before the console wizard or a
        # login prompt has drawn; its verdict time is the boot figure we can always measure.
        rows.append((f"boot to in-guest check verdict, {firmware.value.upper()} under {accel.upper()}",
                     f"{result.seconds:.0f} s"))  # fmt: skip
        if result.login_seconds:
            rows.append(
                (
                    f"console ready (login or wizard), {firmware.value.upper()}",
                    f"{result.login_seconds:.0f} s",
                )
            )
        for key, what in (
            ("userspace_at_s", "kernel + initramfs"),
            ("serial_console_started_at_s", "to console unit"),
        ):
            if key in result.info:  # in-guest clock: from kernel start, firmware and boot loader excluded
                rows.append((f"  {what}, in-guest clock ({firmware.value.upper()})", f"{result.info[key]} s"))
        rows.append(
            (
                f"memory in use after boot ({firmware.value.upper()})",
                f"{result.info.get('mem_used_mib', '?')} MiB",
            )
        )
        if not result.passed:
            rows.append((f"smoke ({firmware.value.upper()})", "FAILED: " + "; ".join(result.problems)))

    width = max(len(name) for name, _ in rows)
    print(f"\nbuild benchmark: {spec.artifact_stem}, accelerator {accel.upper()}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
