"""The plane's settings that change its gateways' identities: `<state_dir>/settings.json`.

Read at every use (a signature, a rate check), so `mgmtplane settings --cert-lifetime 30d`
takes effect at the next renewal without a restart. Missing file or key: the defaults.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mgmtplane.errors import PlaneError
from mgmtplane.registry import read_json, state_lock, write_json_atomic

SETTINGS_FILE = "settings.json"
DEFAULT_CERT_LIFETIME = 90 * 86400
# Seconds are allowed so that tests can watch renewals happen; the renewal schedule and the rate
# limit scale with the lifetime (docs/operate.md).
MIN_CERT_LIFETIME = 2
MAX_CERT_LIFETIME = 3650 * 86400

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str, lo: int, hi: int) -> int:
    """Seconds from `90`, `30s`, `15m`, `1h` or `2d`, between `lo` and `hi`; PlaneError naming `what`."""
    match = _DURATION.match(text)
    if not match:
        raise PlaneError(f"{what}: {text!r} is not a duration", hint="use e.g. 30s, 15m, 1h or 90d")
    seconds = int(float(match.group(1)) * _UNITS[match.group(2)])
    if not lo <= seconds <= hi:
        raise PlaneError(f"{what}: {text!r} is outside {format_duration(lo)} to {format_duration(hi)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 90d, 36h, 15m, 7s."""
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class PlaneSettings:
    """Settings of the identity lifecycle."""

    cert_lifetime: int = DEFAULT_CERT_LIFETIME  # seconds a gateway certificate is valid


def load_settings(state_dir: Path) -> PlaneSettings:
    """The settings in the state dir (defaults for what is missing); PlaneError on a bad file."""
    path = state_dir / SETTINGS_FILE
    data = read_json(path, {})
    if not isinstance(data, dict):
        raise PlaneError(f"{path}: expected a JSON object")
    lifetime = data.get("cert_lifetime", DEFAULT_CERT_LIFETIME)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int):
        raise PlaneError(f"{path}: cert_lifetime: expected seconds as an integer")
    if not MIN_CERT_LIFETIME <= lifetime <= MAX_CERT_LIFETIME:
        raise PlaneError(
            f"{path}: cert_lifetime: {lifetime} is outside {MIN_CERT_LIFETIME}..{MAX_CERT_LIFETIME} seconds"
        )
    return PlaneSettings(cert_lifetime=lifetime)


def save_settings(state_dir: Path, settings: PlaneSettings) -> None:
    """Write the settings atomically (under the state lock)."""
    with state_lock(state_dir):
        write_json_atomic(state_dir / SETTINGS_FILE, asdict(settings))
