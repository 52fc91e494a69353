"""Boots the artifacts under QEMU and lets the in-guest check judge them."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.qemu import BootOptions
from appliance.smoke import smoke
from appliance.spec import Firmware, Spec

pytestmark = pytest.mark.timeout(1200)


def _check(result_passed: bool, problems: tuple[str, ...], console: str) -> None:
    assert result_passed, (
        "smoke failed: " + "; ".join(problems) + "\n" + "\n".join(console.splitlines()[-30:])
    )


def test_qcow2_boots_under_uefi(artifacts: dict[str, Path], spec: Spec) -> None:
    opts = BootOptions(image=artifacts["qcow2"], firmware=Firmware.EFI, disk="virtio", nic="virtio")
    result = smoke(opts, version=spec.version)
    print(f"qcow2/UEFI under {result.accel}: {result.seconds:.0f}s, console ready at {result.login_seconds}")
    _check(result.passed, result.problems, result.console)
    assert "APPLIANCE-SMOKE: PASS" in result.console
    assert int(result.info["mem_used_mib"]) > 0  # the guest reported its figures


def test_ova_disk_boots_under_bios_on_vmware_devices(artifacts: dict[str, Path], spec: Spec) -> None:
    # The disk exactly as shipped in the OVA, on the controller and NIC the OVF declares.
    opts = BootOptions(
        image=artifacts["ova"],
        firmware=Firmware.BIOS,
        disk=str(spec.hardware.disk_controller),
        nic=str(spec.hardware.nic),
    )
    result = smoke(opts, version=spec.version)
    print(f"OVA/BIOS under {result.accel}: {result.seconds:.0f}s, console ready at {result.login_seconds}")
    _check(result.passed, result.problems, result.console)
