"""Seed source 2: the OVF environment (DSP8027) from an attached ISO or VMware guestinfo.ovfEnv."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from firstboot.errors import FirstbootError
from firstboot.seeds import SeedContext, SeedSource
from firstboot.system import System

log = logging.getLogger(__name__)

NS = "http://schemas.dmtf.org/ovf/environment/1"
MAX_BYTES = 1024 * 1024
FILE_NAMES = ("ovf-env.xml", "OVF-ENV.XML", "ovf_env.xml", "OVF_ENV.XML")


def parse(text: str | bytes, origin: str = "ovf-env.xml") -> dict[str, str]:
    """Property key/values from an OVF environment document (environment-level PropertySection first)."""
    try:
        root = DET.fromstring(text)
    except (ParseError, DefusedXmlException) as exc:
        raise FirstbootError(f"{origin}: not a valid OVF environment: {exc}") from None
    if root.tag != f"{{{NS}}}Environment":
        raise FirstbootError(f"{origin}: root element is {root.tag}, expected {{{NS}}}Environment")
    out: dict[str, str] = {}
    # The environment's own sections describe this VM; Entity sections describe siblings in a vApp.
    for section in root.findall(f"{{{NS}}}PropertySection"):
        _collect(section, out, origin)
    return out


def _collect(section: Element, out: dict[str, str], origin: str) -> None:
    for prop in section.findall(f"{{{NS}}}Property"):
        key = prop.get(f"{{{NS}}}key")
        value = prop.get(f"{{{NS}}}value")
        if key is None or value is None:
            raise FirstbootError(f"{origin}: a Property lacks ovfenv:key or ovfenv:value")
        out.setdefault(key, value)


def find_in_dir(directory: Path) -> Path | None:
    """The ovf-env.xml at the top of a mounted ISO (ISO 9660 may upper-case names)."""
    for name in FILE_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def read_file(path: Path) -> dict[str, str]:
    """Parse an ovf-env.xml file."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise FirstbootError(f"{path}: larger than {MAX_BYTES} bytes")
        return parse(path.read_bytes(), str(path))
    except OSError as exc:
        raise FirstbootError(f"{path}: cannot read: {exc.strerror}") from None


def from_guestinfo(system: System) -> dict[str, str]:
    """VMware's guestinfo.ovfEnv through open-vm-tools; empty when not on VMware."""
    if not system.has("vmware-rpctool"):
        return {}
    proc = system.run(["vmware-rpctool", "info-get guestinfo.ovfEnv"], check=False, timeout=15)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    return parse(proc.stdout, "guestinfo.ovfEnv")


def _iso_devices(system: System) -> list[str]:
    devices: list[str] = []
    if system.has("blkid"):
        proc = system.run(["blkid", "-t", "TYPE=iso9660", "-o", "device"], check=False, timeout=15)
        devices += proc.stdout.split()
    devices += sorted(str(p) for p in Path("/dev").glob("sr[0-9]*"))
    return list(dict.fromkeys(devices))


def from_iso(system: System) -> dict[str, str]:
    """Scan CD-ROMs/ISO 9660 devices, mount each read-only and look for ovf-env.xml."""
    if not system.live or not system.has("mount"):
        return {}
    for dev in _iso_devices(system):
        with tempfile.TemporaryDirectory(prefix="firstboot-ovf-", dir="/run") as mnt:
            proc = system.run(["mount", "-o", "ro", dev, mnt], check=False, timeout=30)
            if proc.returncode != 0:
                log.debug("cannot mount %s: %s", dev, proc.stderr.strip())
                continue
            try:
                found = find_in_dir(Path(mnt))
                if found is not None:
                    log.info("OVF environment found on %s", dev)
                    return read_file(found)
            finally:
                system.run(["umount", mnt], check=False, timeout=30)
    return {}


def _read(ctx: SeedContext) -> Mapping[str, str]:
    if ctx.ovf_env_file is not None:
        return read_file(ctx.ovf_env_file)
    if not ctx.probe:
        return {}
    return from_iso(ctx.system) or from_guestinfo(ctx.system)


SOURCE = SeedSource("ovf-env", _read)
