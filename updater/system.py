"""What the updater reads from the running appliance: the booted slot, the image's version and
product, RAUC's configuration and grub's slot state. Parsers are pure; `Appliance` holds the paths,
so tests point it at a directory tree.
"""

from __future__ import annotations

import configparser
import shlex
from dataclasses import dataclass
from pathlib import Path

from updater.errors import UpdateError

SLOT_PARTITIONS = {"A": "root-a", "B": "root-b"}


def booted_slot(cmdline: str) -> str | None:
    """The slot grub booted, from `rauc.slot=` on the kernel command line (None if absent)."""
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if key == "rauc.slot" and sep and value in SLOT_PARTITIONS:
            return value
    return None


def other_slot(slot: str) -> str:
    """The slot an update goes to."""
    return "B" if slot == "A" else "A"


def os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of an os-release file, values unquoted."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            try:
                words = shlex.split(value)
            except ValueError:
                continue
            out[key.strip()] = words[0] if words else ""
    return out


def grubenv_vars(listing: str) -> dict[str, str]:
    """The variables `grub-editenv FILE list` printed."""
    out: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


@dataclass(frozen=True)
class RaucConfig:
    """The parts of RAUC's system.conf the updater needs."""

    compatible: str
    grubenv: Path


def rauc_config(text: str, source: str) -> RaucConfig:
    """Parse RAUC's system.conf (an INI file)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=source)
        return RaucConfig(
            compatible=parser.get("system", "compatible"), grubenv=Path(parser.get("system", "grubenv"))
        )
    except configparser.Error as exc:
        raise UpdateError(f"{source}: {str(exc).splitlines()[0]}") from None


@dataclass(frozen=True)
class Appliance:
    """Where the running appliance keeps what the updater reads; `root` redirects it for tests."""

    root: Path = Path("/")

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def booted_slot(self) -> str | None:
        return booted_slot(self.path("/proc/cmdline").read_text())

    def version(self) -> str:
        """IMAGE_VERSION of the booted slot."""
        release = os_release(self.path("/usr/lib/os-release").read_text())
        version = release.get("IMAGE_VERSION", "")
        if not version:
            raise UpdateError("/usr/lib/os-release: no IMAGE_VERSION: cannot compare versions")
        return version

    def rauc(self) -> RaucConfig:
        path = self.path("/usr/lib/rauc/system.conf")
        try:
            return rauc_config(path.read_text(), str(path))
        except OSError as exc:
            raise UpdateError(f"{path}: cannot read: {exc.strerror or exc}") from None

    @property
    def state_file(self) -> Path:
        return self.path("/var/lib/appliance/update/state.json")

    @property
    def firstboot_done(self) -> bool:
        return self.path("/var/lib/firstboot/done").exists()

    @property
    def registered(self) -> bool:
        return self.path("/var/lib/gateway/cert.pem").exists()

    @property
    def gateway_status_file(self) -> Path:
        return self.path("/run/gateway/status.json")
