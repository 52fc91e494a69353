"""The build's pure parts: generated mkosi config, QEMU command lines, CLI errors."""

from __future__ import annotations

import base64
import runpy
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from appliance.build import check_pure_wheel
from appliance.errors import ApplianceError
from appliance.qemu import BootOptions, Forward, qemu_command, smbios_credentials
from appliance.render import BuildPaths, render_mkosi
from appliance.run import find_tool, run
from appliance.smoke import console_text
from appliance.spec import Firmware, load_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec():
    return load_spec(REPO / "appliance.yaml")


def test_generated_mkosi_config_layers_the_spec(spec, tmp_path: Path) -> None:
    paths = BuildPaths(tmp_path / "out", cache=tmp_path / "cache")
    conf = render_mkosi(spec, paths).read_text()
    assert f"Release={spec.debian_release}" in conf
    assert f"ImageVersion={spec.version}" in conf
    assert f"Output={spec.artifact_stem}" in conf
    assert f"CacheDirectory={tmp_path}/cache/incremental/{spec.name}-{spec.debian_release}" in conf
    assert f"PackageCacheDirectory={tmp_path}/cache/packages" in conf
    sources = (paths.generated / "pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    assert f"Suites: {spec.debian_release} {spec.debian_release}-updates" in sources
    assert "debug" not in sources  # the mirror rejects mkosi's default -debug suite


def test_extra_packages_are_rendered(spec, tmp_path: Path) -> None:
    import dataclasses

    spec2 = dataclasses.replace(spec, packages=("htop", "tcpdump"))
    conf = render_mkosi(spec2, BuildPaths(tmp_path)).read_text()
    assert "Packages=\n        htop\n        tcpdump" in conf


def _cmd(tmp_path: Path, **kw) -> list[str]:
    image = tmp_path / "disk.qcow2"
    image.write_bytes(b"")
    return qemu_command(BootOptions(image=image, accel="tcg", **kw), tmp_path)


def test_qemu_vmware_devices_and_loopback_only_network(tmp_path: Path) -> None:
    cmd = _cmd(tmp_path, disk="pvscsi", nic="vmxnet3", forwards=(Forward(2222, 22),), host_ports=(8443,))
    line = " ".join(cmd)
    assert "-device pvscsi,id=scsi0" in line
    assert "-device vmxnet3,netdev=net0" in line
    netdev = cmd[cmd.index("-netdev") + 1]
    assert "restrict=on" in netdev  # the guest reaches nothing but what is forwarded
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev
    assert "guestfwd=tcp:10.0.2.100:8443-cmd:" in netdev and "STDIO TCP:127.0.0.1:8443" in netdev
    assert "-machine pc" in line and "snapshot=on" in line


def test_qemu_tcg_runs_every_vcpu_in_one_thread(tmp_path: Path) -> None:
    # Multi-threaded TCG races with the guest kernel's self-patching (docs/image.md, "KVM").
    cmd = _cmd(tmp_path)
    assert cmd[cmd.index("-accel") + 1] == "tcg,thread=single"
    assert cmd[cmd.index("-smp") + 1] == "2"  # the guest still has the spec's two vCPUs


def test_qemu_uefi_uses_a_private_copy_of_the_variables(tmp_path: Path) -> None:
    cmd = _cmd(tmp_path, firmware=Firmware.EFI)
    pflash = [a for a in cmd if a.startswith("if=pflash")]
    assert len(pflash) == 2 and "readonly=on" in pflash[0]
    assert str(tmp_path / "OVMF_VARS.fd") in pflash[1]
    assert "q35" in cmd


def test_smbios_credentials_survive_commas_and_newlines() -> None:
    args = smbios_credentials({"network.dns": "192.0.2.1,192.0.2.2", "admin.ssh_key": "ssh-ed25519 AAA x\n"})
    assert args[0] == "-smbios" and "," not in args[1].split("value=", 1)[1]
    key, encoded = args[1].split("io.systemd.credential.binary:", 1)[1].split("=", 1)
    assert key == "network.dns" and base64.b64decode(encoded) == b"192.0.2.1,192.0.2.2"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"disk": "floppy"}, "unknown disk controller 'floppy'"),
        ({"nic": "ne2000"}, "unknown NIC 'ne2000'"),
    ],
)
def test_qemu_bad_options(tmp_path: Path, kw: dict[str, str], message: str) -> None:
    with pytest.raises(ApplianceError, match=message):
        _cmd(tmp_path, **kw)


def test_unknown_disk_format(tmp_path: Path) -> None:
    image = tmp_path / "disk.iso"
    image.write_bytes(b"")
    with pytest.raises(ApplianceError, match="unknown disk format '.iso'"):
        qemu_command(BootOptions(image=image, accel="tcg"), tmp_path)


def test_ova_without_disk_is_an_error(tmp_path: Path) -> None:
    import tarfile

    ova = tmp_path / "x.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        (tmp_path / "x.ovf").write_text("<Envelope/>")
        tar.add(tmp_path / "x.ovf", arcname="x.ovf")
    with pytest.raises(ApplianceError, match="no .vmdk disk in the OVA"):
        qemu_command(BootOptions(image=ova, accel="tcg"), tmp_path)


def test_missing_tool_says_what_for_and_which_package(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ApplianceError) as err:
        find_tool("qemu-img")
    assert "qemu-img not found; it is needed for converting the disk to qcow2" in str(err.value)
    assert "qemu-utils" in str(err.value)


def test_run_failure_carries_command_and_streams() -> None:
    with pytest.raises(ApplianceError) as err:
        run([sys.executable, "-c", "import sys; print('out'); sys.exit('boom')"], capture=True)
    assert "exit code 1: boom" in str(err.value)
    assert err.value.stdout.strip() == "out"  # type: ignore[attr-defined]


def test_console_text_strips_terminal_escapes() -> None:
    raw = b"\x1b[0;32m  OK  \x1b[0m] Started\r\nAPPLIANCE-SMOKE: PASS\r\n"
    assert console_text(raw) == "  OK  ] Started\nAPPLIANCE-SMOKE: PASS\n"


def test_cli_bad_spec_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "appliance.yaml"
    bad.write_text((REPO / "appliance.yaml").read_text().replace("memory_mib: 2048", "memory_mib: 2G"))
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "summary", "--spec", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: hardware.memory_mib: expected an integer >= 512, got '2G'"
    ]
    assert "Traceback" not in proc.stderr


def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(name, b"x")
    return path


def test_a_wheel_with_compiled_code_is_refused(tmp_path: Path) -> None:
    module = "gateway/filter/_xmlfast.cpython-311-x86_64-linux-gnu.so"
    wheel = _zip(tmp_path / "gateway_appliance-0.1.0-py3-none-any.whl", ["gateway/__init__.py", module])
    with pytest.raises(ApplianceError) as err:
        check_pure_wheel(wheel)
    assert str(err.value).startswith(
        f"{wheel}: the wheel must be pure Python, but it carries compiled code: "
        "gateway/filter/_xmlfast.cpython-311-x86_64-linux-gnu.so ("
    )
    assert "image/mkosi.build.chroot" in str(err.value)  # the hint says where the image's modules come from


def test_a_pure_wheel_passes_and_an_unreadable_one_is_one_line(tmp_path: Path) -> None:
    check_pure_wheel(_zip(tmp_path / "pure.whl", ["gateway/__init__.py", "gateway/filter/xmlfilter.py"]))
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ApplianceError, match=r"broken\.whl: cannot read the wheel: "):
        check_pure_wheel(broken)


def test_the_smoke_check_imports_every_accelerator_the_build_compiles() -> None:
    listed = subprocess.run([REPO / "scripts/build-accel.sh", "--list"], capture_output=True, text=True,
                            check=True).stdout.split()  # fmt: skip
    smoke = runpy.run_path(str(REPO / "image/mkosi.extra/usr/libexec/appliance/smoke-check"))
    assert smoke["ACCELERATORS"] == tuple(s.removesuffix(".c").replace("/", ".") for s in listed)
