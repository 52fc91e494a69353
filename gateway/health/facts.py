"""The appliance's own facts for the health record: version, slot, uptime, CPU, memory, /var,
failed units, NTP. Cheap reads of /proc and two small commands, each allowed to be missing.

Every read is bounded and read-only; a fact that cannot be had (a test machine without systemd,
a sandbox that hides it) is None, never an error: the record says what it knows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 5.0
# systemd's timespan: "+1.234ms", "-2min 3.100s", "+1h 2min".
_OFFSET = re.compile(r"^\s*Offset:\s*([+-]?)((?:[0-9.]+(?:us|µs|ms|s|min|h|d)\s*)+)$", re.MULTILINE)
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(us|µs|ms|s|min|h|d)")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Paths:
    """Where the facts are read (tests point them into a temporary tree)."""

    os_release: Path = Path("/etc/os-release")
    cmdline: Path = Path("/proc/cmdline")
    proc: Path = Path("/proc")
    var: Path = Path("/var")
    timesync_synced: Path = Path("/run/systemd/timesync/synchronized")


def read_text(path: Path, limit: int = 64 * 1024) -> str | None:
    """A small text file, or None when it cannot be read."""
    try:
        with path.open("rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def image_version(text: str | None) -> str | None:
    """IMAGE_VERSION from os-release text (VERSION_ID when a build did not set it)."""
    values: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    return values.get("IMAGE_VERSION") or values.get("VERSION_ID") or None


def booted_slot(cmdline: str | None) -> str:
    """The root slot grub booted, from `rauc.slot=` on the kernel command line (image/ A/B), or
    "unknown" on an image without slots."""
    for word in (cmdline or "").split():
        key, sep, value = word.partition("=")
        if key == "rauc.slot" and sep and re.fullmatch(r"[A-Za-z0-9_-]{1,16}", value):
            return value
    return "unknown"


def parse_meminfo(text: str | None) -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes."""
    found: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in ("MemTotal", "MemAvailable") and parts and parts[0].isdigit():
            found[key] = int(parts[0]) * 1024
    return found.get("MemTotal"), found.get("MemAvailable")


def cpu_times(stat: str | None) -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat's first line."""
    first = (stat or "").split("\n", 1)[0].split()
    if len(first) < 5 or first[0] != "cpu" or not all(f.isdigit() for f in first[1:]):
        return None
    values = [int(f) for f in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def parse_ntp_offset(text: str | None) -> float | None:
    """The offset in seconds from `timedatectl timesync-status` ("Offset: +1.234ms")."""
    match = _OFFSET.search(text or "")
    if match is None:
        return None
    total = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(match.group(2)))
    return -total if match.group(1) == "-" else total


async def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str | None:
    """A command's standard output, or None when it is missing, fails or takes too long."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "SYSTEMD_COLORS": "0"},
        )
    except OSError as exc:
        log.debug("%s: %s", argv[0], exc)
        return None
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("%s did not answer in %.0f s", argv[0], timeout)
        return None
    if proc.returncode != 0:
        return None
    return out[: 256 * 1024].decode("utf-8", "replace")


def parse_failed_units(text: str | None) -> list[str] | None:
    """Unit names from `systemctl list-units --state=failed --plain --no-legend`."""
    if text is None:
        return None
    names = []
    for line in text.splitlines():
        fields = line.split()
        if fields and re.fullmatch(r"[A-Za-z0-9:_.@\\-]{1,200}", fields[0]):
            names.append(fields[0])
    return names[:100]


class CommandFacts(TypedDict):
    """What the two commands tell (None where they are missing or fail)."""

    failed_units: list[str] | None
    ntp_offset_s: float | None
    ntp_synced: bool | None


class SystemFacts:
    """Reads the facts; keeps the previous CPU sample so each record gives the CPU use since the last."""

    def __init__(self, paths: Paths | None = None) -> None:
        self.paths = paths or Paths()
        self._cpu: tuple[int, int] | None = None
        self._timesyncd: bool | None = None

    def static(self) -> dict[str, object]:
        """Facts that do not change while the daemon runs (read once)."""
        return {
            "image_version": image_version(read_text(self.paths.os_release)),
            "slot": booted_slot(read_text(self.paths.cmdline)),
        }

    def sample(self) -> dict[str, object]:
        """The facts of /proc and /var now (synchronous, all small reads)."""
        proc = self.paths.proc
        out: dict[str, object] = {}
        uptime = read_text(proc / "uptime")
        out["uptime_s"] = _first_float(uptime)
        out["load1"] = _first_float(read_text(proc / "loadavg"))
        cpu = cpu_times(read_text(proc / "stat", 4096))
        out["cpu_percent"] = None
        if cpu is not None and self._cpu is not None and cpu[1] > self._cpu[1]:
            out["cpu_percent"] = round(100.0 * (cpu[0] - self._cpu[0]) / (cpu[1] - self._cpu[1]), 2)
        self._cpu = cpu
        out["mem_total"], out["mem_available"] = parse_meminfo(read_text(proc / "meminfo"))
        try:
            st = os.statvfs(self.paths.var)
        except OSError:
            out["var_total"] = out["var_used"] = out["var_percent"] = None
        else:
            total = st.f_blocks * st.f_frsize
            used = total - st.f_bfree * st.f_frsize
            # As df computes it: used / (used + available to unprivileged users).
            usable = used + st.f_bavail * st.f_frsize
            out["var_total"], out["var_used"] = total, used
            out["var_percent"] = round(100.0 * used / usable, 2) if usable else None
        times = os.times()
        out["gateway_cpu_s"] = round(times.user + times.system, 3)
        out["gateway_rss"] = _rss(read_text(proc / "self/status"))
        return out

    async def commands(self) -> CommandFacts:
        """Failed units and the NTP offset, from systemctl and timedatectl (None where unavailable)."""
        failed, timesync = await asyncio.gather(
            run_command(
                ["systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"]
            ),
            run_command(["timedatectl", "--no-pager", "timesync-status"]),
        )
        synced: bool | None = None
        if timesync is not None or self.paths.timesync_synced.parent.is_dir():
            synced = self.paths.timesync_synced.exists()
        return {
            "failed_units": parse_failed_units(failed),
            "ntp_offset_s": parse_ntp_offset(timesync),
            "ntp_synced": synced,
        }


def _first_float(text: str | None) -> float | None:
    try:
        return float((text or "").split()[0])
    except (IndexError, ValueError):
        return None


def _rss(status: str | None) -> int | None:
    for line in (status or "").splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None
