"""Boots appliance images under QEMU: KVM when it really works, TCG otherwise."""

from __future__ import annotations

import base64
import functools
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.run import find_tool
from appliance.spec import Firmware

log = logging.getLogger(__name__)

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Guest connections to HOST_ALIAS:PORT reach 127.0.0.1:PORT on the host (--host-port). Not
# 10.0.2.2, slirp's own address: it refuses command forwards there.
HOST_ALIAS = "10.0.2.100"
# QEMU's isa-debug-exit device: the guest writes a byte to this port and QEMU exits with
# status (byte << 1) | 1. The in-guest smoke check writes 0x10 (pass) or 0x20 (fail).
DEBUG_EXIT_PORT = 0xF4
EXIT_PASS = (0x10 << 1) | 1
EXIT_FAIL = (0x20 << 1) | 1


# Disk controllers and NICs by the names the spec uses, mapped to QEMU devices.
DISK_DEVICES = {
    "virtio": ["-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,drive=disk0,bus=scsi0.0"],
    "pvscsi": ["-device", "pvscsi,id=scsi0", "-device", "scsi-hd,drive=disk0,bus=scsi0.0"],
    "lsilogic": ["-device", "lsi53c895a,id=scsi0", "-device", "scsi-hd,drive=disk0,bus=scsi0.0"],
    "lsilogicsas": ["-device", "mptsas1068,id=scsi0", "-device", "scsi-hd,drive=disk0,bus=scsi0.0"],
    "sata": ["-device", "ahci,id=ahci0", "-device", "ide-hd,drive=disk0,bus=ahci0.0"],
    "ide": ["-device", "ide-hd,drive=disk0"],
}
NIC_DEVICES = {"virtio": "virtio-net-pci", "vmxnet3": "vmxnet3", "e1000": "e1000", "e1000e": "e1000e"}


@dataclass(frozen=True)
class Forward:
    """A TCP port forward: 127.0.0.1:host_port on the host to guest_port in the guest."""

    host_port: int
    guest_port: int


@dataclass
class BootOptions:
    """Everything one QEMU boot needs; built by the CLI and by the smoke and VM tests."""

    image: Path
    firmware: Firmware = Firmware.BIOS
    memory_mib: int = 2048
    cpus: int = 2
    disk: str = "virtio"
    nic: str = "virtio"
    forwards: Sequence[Forward] = ()
    # Guest connections to HOST_ALIAS:PORT reach 127.0.0.1:PORT on the host (and nothing else does).
    host_ports: Sequence[int] = ()
    credentials: Mapping[str, str] = field(default_factory=dict)
    ovf_iso: Path | None = None
    snapshot: bool = True
    serial_log: Path | None = None
    debug_exit: bool = False
    accel: str | None = None  # kvm | tcg; None probes


def probe_kernel(image: Path | None) -> Path | None:
    """A Linux kernel to probe KVM with: $APPLIANCE_PROBE_KERNEL, or one built beside the image."""
    if env := os.environ.get("APPLIANCE_PROBE_KERNEL"):
        return Path(env)
    if image is not None:
        kernels = sorted(image.resolve().parent.glob("*.vmlinuz"))
        if kernels:
            return kernels[-1]
    return None


@functools.cache
def kvm_works(kernel: Path | None) -> bool:
    """Whether a guest really runs under KVM here: /dev/kvm can exist while every guest fails.

    The probe boots a real kernel with no root filesystem: under working KVM it panics within a
    second or two and QEMU exits (-no-reboot); under broken KVM QEMU stops on "KVM internal error".
    Firmware alone is no proof (SeaBIOS runs here while every kernel fails), so without a kernel
    to probe with the answer is no; `--accel kvm` overrides.
    """
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu or not os.access("/dev/kvm", os.R_OK | os.W_OK) or not kernel or not kernel.exists():
        return False
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "console"
        cmd = [qemu, "-accel", "kvm", "-machine", "pc", "-m", "256", "-nodefaults", "-display", "none",
               "-no-reboot", "-chardev", f"file,id=con,path={out}", "-serial", "chardev:con",
               "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"]  # fmt: skip
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)
        except subprocess.TimeoutExpired:
            return False
        works = out.exists() and b"Kernel panic" in out.read_bytes()
    log.debug("KVM probe with %s: %s", kernel, "works" if works else "fails")
    return works


def accelerator(requested: str | None = None, image: Path | None = None) -> str:
    """The accelerator to use: the requested one, else KVM if it really works, else TCG."""
    if requested:
        return requested
    return "kvm" if kvm_works(probe_kernel(image)) else "tcg"


def disk_format(path: Path) -> str:
    """QEMU's name for an artifact's disk format, from its file name."""
    suffix = path.suffix.lower()
    formats = {".raw": "raw", ".img": "raw", ".qcow2": "qcow2", ".vmdk": "vmdk"}
    if suffix not in formats:
        raise ApplianceError(
            f"{path}: unknown disk format {suffix!r}", hint="expected .raw, .qcow2, .vmdk or .ova"
        )
    return formats[suffix]


def extract_ova_disk(ova: Path, dest: Path) -> Path:
    """Extract the VMDK from an OVA into dest and return its path."""
    try:
        with tarfile.open(ova, "r:") as tar:
            disks = [m for m in tar.getmembers() if m.name.endswith(".vmdk")]
            if not disks:
                raise ApplianceError(f"{ova}: no .vmdk disk in the OVA")
            tar.extract(disks[0], dest, filter="data")
            return dest / disks[0].name
    except tarfile.TarError as exc:
        raise ApplianceError(f"{ova}: not a readable OVA: {exc}") from exc


def smbios_credentials(credentials: Mapping[str, str]) -> list[str]:
    """SMBIOS type 11 strings that systemd imports as system credentials (binary form: no escaping)."""
    args = []
    for key, value in credentials.items():
        encoded = base64.b64encode(value.encode()).decode()
        args += ["-smbios", f"type=11,value=io.systemd.credential.binary:{key}={encoded}"]
    return args


def qemu_command(opts: BootOptions, workdir: Path) -> list[str]:
    """The full QEMU command line for opts; firmware variables and extracted disks go in workdir."""
    image = opts.image
    if image.suffix.lower() == ".ova":
        image = extract_ova_disk(image, workdir)
    fmt = disk_format(image)
    if opts.disk not in DISK_DEVICES:
        raise ApplianceError(
            f"unknown disk controller {opts.disk!r}", hint=f"one of {', '.join(DISK_DEVICES)}"
        )
    if opts.nic not in NIC_DEVICES:
        raise ApplianceError(f"unknown NIC {opts.nic!r}", hint=f"one of {', '.join(NIC_DEVICES)}")
    accel = accelerator(opts.accel, opts.image)
    machine = "q35" if opts.firmware == Firmware.EFI else "pc"
    cmd = [
        find_tool("qemu-system-x86_64"),
        "-accel",
        # TCG runs every vCPU in one host thread: with a thread each (QEMU's default), a guest
        # kernel patching its own code (text_poke) under 2 vCPUs here sometimes dies in early boot
        # ("Oops: int3", then a panic in an interrupt; seen in CI). One thread never did.
        "tcg,thread=single" if accel == "tcg" else accel,
        "-machine",
        machine,
        # KVM here can't take -cpu host/max (MSR errors); its default model runs.
        *(["-cpu", "max"] if accel == "tcg" else []),
        "-m",
        str(opts.memory_mib),
        "-smp",
        str(opts.cpus),
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-vga",
        "none",
    ]
    if opts.firmware == Firmware.EFI:
        if not OVMF_CODE.exists():
            raise ApplianceError(f"{OVMF_CODE} not found; it is needed for UEFI boots", hint="install ovmf")
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        cmd += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]
    snapshot = ",snapshot=on" if opts.snapshot else ""
    readonly_fmt = fmt == "vmdk" and not opts.snapshot
    if readonly_fmt:
        raise ApplianceError(f"{image}: a streamOptimized VMDK can only be booted with a snapshot")
    cmd += ["-drive", f"if=none,id=disk0,format={fmt},file={image}{snapshot}", *DISK_DEVICES[opts.disk]]
    netdev = "user,id=net0,restrict=on"
    for fwd in opts.forwards:
        netdev += f",hostfwd=tcp:127.0.0.1:{fwd.host_port}-:{fwd.guest_port}"
    for port in opts.host_ports:
        # cmd: runs one socat per guest connection; a tcp: chardev would be one shared stream.
        netdev += f",guestfwd=tcp:{HOST_ALIAS}:{port}-cmd:{find_tool('socat')} STDIO TCP:127.0.0.1:{port}"
    cmd += ["-netdev", netdev, "-device", f"{NIC_DEVICES[opts.nic]},netdev=net0"]
    if opts.ovf_iso:
        cmd += ["-drive", f"if=none,id=cd0,media=cdrom,readonly=on,format=raw,file={opts.ovf_iso}"]
        cmd += (
            ["-device", "ide-cd,drive=cd0"] if machine == "pc" else ["-device", "ide-cd,drive=cd0,bus=ide.1"]
        )
    cmd += smbios_credentials(opts.credentials)
    if opts.debug_exit:
        cmd += ["-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"]
    if opts.serial_log:
        cmd += ["-chardev", f"file,id=ser0,path={opts.serial_log}", "-serial", "chardev:ser0"]
    else:
        cmd += ["-serial", "mon:stdio"]
    cmd += ["-device", "virtio-rng-pci"]
    return cmd


def boot(opts: BootOptions) -> int:
    """Boot interactively with the serial console on this terminal; return QEMU's exit status."""
    with tempfile.TemporaryDirectory(prefix="appliance-boot-") as tmp:
        cmd = qemu_command(opts, Path(tmp))
        log.info(
            "booting %s under %s (%s firmware); Ctrl-A X quits", opts.image, cmd[2].upper(), opts.firmware
        )
        return subprocess.run(cmd, check=False).returncode
