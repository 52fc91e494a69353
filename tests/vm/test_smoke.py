"""Boots the artifacts under QEMU and lets the in-guest check judge them."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.qemu import BootOptions, Firmware
from appliance.smoke import smoke
from appliance.spec import Spec

pytestmark = pytest.mark.timeout(1200)


def _check(result_passed: bool, problems: tuple[str, ...], console: str) -> None:
    assert result_passed, (
        "smoke failed: " + "; ".join(problems) + "\n" + "\n".join(console.splitlines()[-30:])
    )


def test_qcow2_boots_under_uefi(artifacts: dict[str, Path], spec: Spec) -> None:
    opts = BootOptions(image=artifacts["qcow2"], firmware=Firmware.efi, disk="virtio", nic="virtio")
    result = smoke(opts, version=spec.version)
    print(f"qcow2/UEFI under {result.accel}: {result.seconds:.0f}s, login prompt at {result.login_seconds}")
    _check(result.passed, result.problems, result.console)
    assert "login:" in result.console


def test_ova_disk_boots_under_bios_on_vmware_devices(artifacts: dict[str, Path], spec: Spec) -> None:
    # The disk exactly as shipped in the OVA, on the controller and NIC the OVF declares.
    opts = BootOptions(
        image=artifacts["ova"],
        firmware=Firmware.bios,
        disk=str(spec.hardware.disk_controller),
        nic=str(spec.hardware.nic),
    )
    result = smoke(opts, version=spec.version)
    print(f"OVA/BIOS under {result.accel}: {result.seconds:.0f}s, login prompt at {result.login_seconds}")
    _check(result.passed, result.problems, result.console)


def test_wrong_version_is_reported(artifacts: dict[str, Path]) -> None:
    """The check is real: told to expect another version, the guest fails the image."""
    opts = BootOptions(image=artifacts["qcow2"], firmware=Firmware.bios)
    result = smoke(opts, version="0.0.0-not-this-one")
    assert not result.passed
    assert any("IMAGE_VERSION" in p for p in result.problems), result.problems
