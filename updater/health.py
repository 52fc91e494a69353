"""At every boot: mark the booted slot good once the appliance is healthy, or roll a new slot back.

A slot on its trial (the first boot after an install) is healthy when the appliance's own units
have not failed and either the gateway is connected to the plane or first boot is still waiting
for its operator. It gets TRIAL_SECONDS for that; a failed gateway decides sooner. If it is not
healthy, the slot is marked bad and the appliance reboots: grub then boots the other slot.

A slot that has passed its trial once (or the slot the OVA shipped) is marked good as soon as the
boot has finished, whatever the network does: its software is proven, and an outage of the plane
or of the network must not roll an appliance back to older software. Marking it good resets grub's
attempt counter; a boot that never finishes leaves the count up and, after three, grub falls back.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from updater import state
from updater.errors import UpdateError
from updater.rauc import Rauc
from updater.system import Appliance, other_slot

log = logging.getLogger(__name__)

TRIAL_SECONDS = 900.0
BOOT_SECONDS = 900.0
POLL_SECONDS = 3.0
# The gateway restarts every 5 s on failure; this many restarts in a trial means it cannot start.
GATEWAY_RESTARTS = 3
CRITICAL_UNITS = (
    "systemd-networkd.service",
    "systemd-resolved.service",
    "nftables.service",
    "firstboot.service",
)


class Systemd:
    """The few questions the health check asks systemd (a class, so tests can answer them)."""

    def _run(self, *argv: str) -> str:
        proc = subprocess.run(["systemctl", *argv], capture_output=True, text=True, check=False, timeout=60)
        return proc.stdout.strip()

    def system_state(self) -> str:
        return self._run("is-system-running")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self._run("show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def reboot(self) -> None:
        self._run("reboot")


def tunnel_state(status_text: str, status_file: bytes | None, now: float) -> str:
    """The tunnel's state: from /run/gateway/status.json when it is there and fresh, else from the
    gateway unit's sd_notify STATUS ("tunnel connected")."""
    if status_file is not None:
        try:
            data: Any = json.loads(status_file)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("state"), str):
            updated, interval = data.get("updated_at"), data.get("interval")
            if (
                isinstance(updated, int | float)
                and isinstance(interval, int | float)
                and not isinstance(updated, bool)
                and now - updated > 3 * interval
            ):
                return "stale"
            return str(data["state"])
    words = status_text.split()
    return words[1].rstrip(":") if len(words) > 1 and words[0] == "tunnel" else ""


@dataclass(frozen=True)
class Verdict:
    """None: not decided yet; True: healthy; False: unhealthy. `why` says what decided it."""

    healthy: bool | None
    why: str


def judge(app: Appliance, systemd: Systemd, now: float) -> Verdict:
    """How the appliance looks right now, for a slot on its trial."""
    units = {unit: systemd.show(unit, "ActiveState") for unit in CRITICAL_UNITS}
    failed = [unit for unit, props in units.items() if props.get("ActiveState") == "failed"]
    if failed:
        return Verdict(False, f"{', '.join(failed)} failed")
    if not app.firstboot_done:
        return Verdict(True, "first boot is waiting for its operator")
    if not app.registered:
        return Verdict(True, "first boot is done and the gateway is not registered")
    gw = systemd.show("gateway.service", "ActiveState", "SubState", "NRestarts", "StatusText")
    restarts = int(gw.get("NRestarts", "0") or 0)
    if gw.get("ActiveState") == "failed":
        return Verdict(False, "gateway.service failed")
    if restarts >= GATEWAY_RESTARTS:
        return Verdict(False, f"gateway.service cannot start (restarted {restarts} times)")
    try:
        status_file: bytes | None = app.gateway_status_file.read_bytes()
    except OSError:
        status_file = None
    tunnel = tunnel_state(gw.get("StatusText", ""), status_file, now)
    if tunnel == "connected":
        return Verdict(True, "the gateway is connected to the plane")
    return Verdict(None, f"gateway.service {gw.get('ActiveState', '?')}, tunnel {tunnel or 'unknown'}")


def _uptime(app: Appliance) -> float:
    try:
        return float(app.path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def notice_outcomes(record: dict[str, Any], booted: str, version: str) -> list[str]:
    """Settle what the last boot left behind: an install cut off, or a new slot that fell back.
    Changes `record`; returns the one-line messages to log."""
    messages = []
    installing = record.pop("installing", None)
    if isinstance(installing, dict):
        reason = "the install was cut off (power loss or reset); the slot it wrote is left unbootable"
        record["last"] = {**installing, "result": "interrupted", "reason": reason, "at": state.now()}
        messages.append(f"update to {installing.get('version')} in slot {installing.get('slot')}: {reason}")
    pending = record.get("pending")
    if isinstance(pending, dict) and pending.get("slot") != booted:
        record.pop("pending")
        reason = record.pop("trial_failure", None) or (
            f"slot {pending.get('slot')} did not finish booting, so the boot loader fell back"
        )
        record["last"] = {**pending, "result": "rolled-back", "reason": reason, "at": state.now()}
        messages.append(
            f"update to {pending.get('version')} rolled back: {version} runs again in slot {booted}: {reason}"
        )
    return messages


def health(
    app: Appliance,
    rauc: Rauc,
    systemd: Systemd,
    *,
    trial_seconds: float = TRIAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Judge this boot; returns the exit status (1 when the slot was rolled back)."""
    booted = app.booted_slot()
    if booted is None:
        raise UpdateError("no rauc.slot= on the kernel command line: not booted by the slot chooser")
    version = app.version()
    record = state.load(app.state_file)
    messages = notice_outcomes(record, booted, version)
    for message in messages:
        log.error("%s", message)
    if messages:
        state.save(app.state_file, record)

    start = clock()
    boot_state = systemd.system_state()
    while boot_state in ("initializing", "starting") and clock() - start < BOOT_SECONDS:
        sleep(POLL_SECONDS)
        boot_state = systemd.system_state()
    pending = record.get("pending")
    trial = isinstance(pending, dict) and pending.get("slot") == booted
    if not trial:
        rauc.mark("good")
        log.info("slot %s (%s) marked good %.0f s after boot: boot finished (%s)",
                 booted, version, _uptime(app), boot_state)  # fmt: skip
        return 0

    verdict = judge(app, systemd, time.time())
    while verdict.healthy is None and clock() - start < trial_seconds:
        sleep(POLL_SECONDS)
        verdict = judge(app, systemd, time.time())
    assert isinstance(pending, dict)
    if verdict.healthy:
        rauc.mark("good")
        record.pop("pending", None)
        record["last"] = {**pending, "result": "installed", "reason": verdict.why, "at": state.now(),
                          "healthy_after_boot_seconds": round(_uptime(app), 1)}  # fmt: skip
        state.save(app.state_file, record)
        log.info("slot %s (%s) marked good %.0f s after boot: %s", booted, version, _uptime(app), verdict.why)
        return 0
    why = (
        verdict.why
        if verdict.healthy is False
        else f"not healthy after {trial_seconds:.0f} s ({verdict.why})"
    )
    record["trial_failure"] = why
    state.save(app.state_file, record)
    log.error("slot %s (%s) failed its trial: %s; marking it bad and rebooting into slot %s",
              booted, version, why, other_slot(booted))  # fmt: skip
    rauc.mark("bad")
    systemd.reboot()
    return 1
