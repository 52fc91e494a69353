"""The status console after first boot (like a hypervisor's DCUI): what the appliance is doing, and a menu."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firstboot import apply as applier
from firstboot import console
from firstboot.apply import gateway, network
from firstboot.settings import Settings, build
from firstboot.system import System, read_os_release
from gwcore import status_file
from gwcore.safeload import loads_json, loads_yaml

log = logging.getLogger(__name__)

STATUS_FILE = str(status_file.DEFAULT_PATH)


@dataclass(frozen=True)
class StatusInfo:
    version: str
    hostname: str
    addresses: tuple[str, ...]
    plane_url: str
    gateway_id: str
    service: str  # systemctl is-active gateway
    tunnel: str  # from the gateway's status file
    last_error: str
    targets: str
    configured: bool
    notes: tuple[str, ...] = field(default=())
    relayed: str = ""  # streams, when the gateway reported them
    identity: str = ""  # the certificate: until when, renewal, revoked or expired (docs/operate.md)
    health: tuple[str, ...] = ()  # the health record's facts, as "Label: value" lines
    slot: str = ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = loads_json(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _when(unix: float | None, prefix: str) -> str:
    return f" {prefix} " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix)) if unix else ""


def describe_tunnel(report: status_file.TunnelReport, now: float, stale: str | None) -> str:
    """The Tunnel line for a report (pure)."""
    if stale is not None:
        return f"unknown: {stale} (it said: {report.state})"
    state = report.state
    if state == "connected":
        count = f" (connection {report.connects})" if report.connects else ""
        return f"connected{_when(report.since, 'since')}{count}"
    if state == "draining":
        return "draining: finishing open calls before reconnecting"
    if state in ("connecting", "backoff", "idle"):
        retry = ""
        if state == "backoff" and report.next_attempt_at is not None:
            retry = f", next in {status_file.format_age(report.next_attempt_at - now)}"
        return f"down{_when(report.since, 'since')}: retrying ({report.attempts} failed attempts{retry})"
    if state == "rejected":
        return f"STOPPED: {report.stop_reason or 'the plane refused this gateway'}"
    if state == "stopped":
        return f"stopped{_when(report.since, 'at')}"
    return state  # a state from a newer gateway: shown as it is


def describe_identity(report: status_file.TunnelReport) -> str:
    """The Identity line for a report (pure); empty when the gateway says nothing about it."""
    until = _when(report.cert_not_after, "until").strip()
    state = report.identity
    if state == "revoked":
        return "REVOKED by the plane: enrol again with a new join token (menu: Re-register)"
    if state == "expired":
        return f"EXPIRED: the certificate{_when(report.cert_not_after, 'ran out on')} (menu: Re-register)"
    if state == "refused":
        return "REFUSED by the plane (see Tunnel): enrol again with a new join token (menu: Re-register)"
    if not until:
        return ""
    line = f"certificate valid {until}"
    if state == "renewal-unavailable":
        why = report.renew_error or "the plane does not renew it"
        return f"{line}; NOT renewed ({why}): re-register before then"
    if state == "renewal-failing":
        return f"{line}; renewal failing, retrying: {report.renew_error or 'unknown error'}"
    renews = _when(report.renew_at, "renews from")
    return f"{line}{',' + renews if renews else ''}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def describe_targets(report: status_file.TunnelReport) -> str:
    """The Targets line: the inventory's size and, once probed, what is up and what is not (pure)."""
    count = str(report.targets) if report.targets is not None else "?"
    states = report.target_states
    if not states:
        return count
    up = sum(1 for t in states if t.state in ("up", "degraded"))
    parts = [f"{up} up"]
    bad = [t for t in states if t.state not in ("up", "degraded")]
    if bad:
        shown = ", ".join(
            f"{t.name}: {t.state}" + (f" ({t.error.split(':', 1)[0]})" if t.error else "") for t in bad[:3]
        )
        more = f", {len(bad) - 3} more" if len(bad) > 3 else ""
        parts.append(f"{len(bad)} not ({shown}{more})")
    changed = [t.name for t in states if t.cert_changed]
    if changed:
        parts.append(f"new TLS certificate: {', '.join(changed[:3])}")
    return f"{count}: {'; '.join(parts)}"


def health_lines(report: status_file.TunnelReport, now: float) -> list[str]:
    """The health record's facts as status lines, the same facts the plane gets (pure); none from
    a gateway that does not report them yet."""
    if report.health_at is None:
        return []
    lines = []
    ntp = {True: ", NTP synchronised", False: ", NTP NOT synchronised", None: ""}[report.ntp_synced]
    if report.clock_problem:
        lines.append(f"Clock:        PROBLEM: {report.clock_problem}")
    elif report.clock_offset is not None:
        lines.append(f"Clock:        ok ({report.clock_offset:+.2f} s from the plane{ntp})")
    elif ntp:
        lines.append(f"Clock:        not compared with the plane yet{ntp}")
    if report.cert_not_after is not None and not report.identity:  # else the Identity line says it
        days = (report.cert_not_after - now) / 86400
        until = time.strftime("%Y-%m-%d", time.gmtime(report.cert_not_after))
        state = f"valid until {until} ({days:.0f} days)" if days > 0 else f"EXPIRED on {until}"
        lines.append(f"Certificate:  {state}")
    system = []
    if report.load1 is not None:
        system.append(f"load {report.load1:.2f}")
    if report.mem_available is not None and report.mem_total:
        system.append(f"{_gib(report.mem_available)}/{_gib(report.mem_total)} GiB free")
    if report.var_percent is not None:
        system.append(f"/var {report.var_percent:.0f}%")
    # Short lines: the tty1 console may be 80 columns by 25 rows, menu included.
    failed = report.failed_units
    if not failed:
        system.append("no failed units")
    lines.append(f"System:       {', '.join(system)}")
    if failed:
        more = f" (and {len(failed) - 2} more)" if len(failed) > 2 else ""
        lines.append(f"Failed units: {', '.join(failed[:2])}{more}")
    lines.append(
        f"Filter:       {report.filter_allowed} allowed, {report.filter_denied} denied,"
        f" {report.filter_removed} fields removed"
    )
    if report.health_acked_at is not None:
        sent = f"last taken by the plane {status_file.format_age(now - report.health_acked_at)} ago"
    else:
        sent = "not taken by the plane yet (or the plane does not ask for it)"
    lines.append(f"Health:       {sent}")
    return lines


def _pid_alive(system: System, pid: int | None) -> bool | None:
    if not system.live or pid is None:
        return None  # a --root tree: its pids are not ours to look at
    return Path(f"/proc/{pid}").exists()


def gather(system: System, now: float | None = None) -> StatusInfo:
    """Collect what the status screen shows; every source may be missing."""
    now = time.time() if now is None else now
    release = read_os_release(system)
    version = release.get("IMAGE_VERSION") or release.get("VERSION_ID") or "unknown"
    try:
        hostname = system.path("/etc/hostname").read_text().strip()
    except OSError:
        hostname = "unknown"
    addresses: list[str] = []
    service = "unknown"
    if system.live:
        proc = system.run(["ip", "-brief", "address"], check=False, timeout=5)
        for line in proc.stdout.splitlines():
            fields = line.split()
            if fields and fields[0] != "lo" and len(fields) > 2:
                addresses.append(f"{fields[0]}: {' '.join(fields[2:])}")
        service = system.run(
            ["systemctl", "is-active", "gateway.service"], check=False, timeout=5
        ).stdout.strip()
    ident = _read_json(system.path("/var/lib/gateway/identity.json")) or {}
    plane_url = str(ident.get("plane_url", ""))
    if not plane_url:
        try:
            conf = loads_yaml(system.path(gateway.CONFIG).read_text())
            plane_url = str(conf.get("plane_url", "")) if isinstance(conf, dict) else ""
        except (OSError, ValueError):
            pass
    notes: list[str] = []
    relayed = ""
    identity = ""
    health: list[str] = []
    slot = ""
    report = status_file.decode(_read_json(system.path(STATUS_FILE)))
    if report is None:
        tunnel, last_error, targets = "unknown (the gateway has not reported)", "", "?"
    else:
        stale = status_file.staleness(report, now, _pid_alive(system, report.pid))
        tunnel = describe_tunnel(report, now, stale)
        last_error = report.last_error or ""
        if report.stop_reason and last_error == report.stop_reason:
            last_error = "the reason it stopped, above"
        targets = describe_targets(report)
        relayed = f"{report.relayed} calls since the gateway started, {report.streams_open} open"
        identity = describe_identity(report)
        health = health_lines(report, now) if stale is None else []
        slot = report.slot if report.slot not in ("", "unknown") else ""
        plane_url = plane_url or report.plane_url
        if report.action and stale is None:
            notes.append(f"What to do: {report.action}")
    fb_error = applier.last_error(system)
    if fb_error and not applier.is_done(system):
        last_error = last_error or fb_error
        notes.append("First boot has not completed: use the wizard or re-register.")
    return StatusInfo(
        version=version,
        hostname=hostname,
        addresses=tuple(addresses),
        plane_url=plane_url or "(not registered)",
        gateway_id=str(ident.get("gateway_id", "(none)")),
        service=service or "unknown",
        tunnel=tunnel,
        last_error=last_error or "none",
        targets=targets,
        configured=applier.is_done(system),
        notes=tuple(notes),
        relayed=relayed,
        identity=identity,
        health=tuple(health),
        slot=slot,
    )


def render(info: StatusInfo) -> list[str]:
    """The status as lines (pure)."""
    lines = [
        f"Gateway appliance {info.version}" + (f" (slot {info.slot})" if info.slot else ""),
        "",
        f"Host name:    {info.hostname}",
    ]
    lines += [f"Address:      {a}" for a in info.addresses] or ["Address:      (none)"]
    lines += [
        f"Plane:        {info.plane_url}",
        f"Gateway id:   {info.gateway_id}",
    ]
    if info.identity:
        lines.append(f"Identity:     {info.identity}")
    lines += [
        f"Service:      {info.service}",
        f"Tunnel:       {info.tunnel}",
        f"Targets:      {info.targets}",
    ]
    if info.relayed:
        lines.append(f"Relayed:      {info.relayed}")
    lines += list(info.health)
    lines += [
        f"Last error:   {info.last_error}",
    ]
    lines += list(info.notes)
    return lines


# ---------------------------------------------------------------- menu actions (shared by both views)


def current_settings(system: System) -> Settings | None:
    """The settings first boot applied (state.json), to start a reconfiguration from."""
    return applier.saved_settings(system)


def reregister_words(system: System, token: str) -> str:
    """reregister(), said for the console: the id, and whether the plane kept the old one."""
    before = str((_read_json(system.path("/var/lib/gateway/identity.json")) or {}).get("gateway_id", ""))
    gateway_id = reregister(system, token)
    same = " (the same gateway id as before)" if gateway_id == before else ""
    return f"Registered as gateway {gateway_id}{same}"


def reregister(system: System, token: str, *, proxy_url: str | None = None) -> str:
    """Register with a new token in a fresh directory, swap it in, rewrite the config, restart the gateway.

    This is also how an appliance revoked by the plane, or back after an outage longer than its
    certificate's life, is enrolled again: a token made with `mgmtplane token create --gateway ID`
    gives it back its id (docs/operate.md)."""
    old = current_settings(system)
    values = old.raw() if old is not None else {}
    values["gateway.join_token"] = token
    values.pop("gateway.plane_url", None)
    if proxy_url is not None:
        values["proxy.url"] = proxy_url
    settings = build(values, {k: "status-console" for k in values})
    state_dir = system.path(gateway.STATE_DIR)
    fresh = state_dir.with_name(state_dir.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    gateway_id = gateway.register_into(system, settings, fresh, force=True)
    # Swap only after the new identity is complete, so a failure keeps the old one working.
    retired = state_dir.with_name(state_dir.name + ".old")
    shutil.rmtree(retired, ignore_errors=True)
    if state_dir.exists():
        os.replace(state_dir, retired)
    os.replace(fresh, state_dir)
    shutil.rmtree(retired, ignore_errors=True)
    gateway.apply_config(system, settings)
    system.run(["systemctl", "restart", "--no-block", "gateway.service"], check=False)
    return gateway_id


POWER = {"reboot": ["systemctl", "reboot"], "poweroff": ["systemctl", "poweroff"]}


def try_network(system: System, settings: Settings) -> tuple[bytes | None, str | None]:
    """Apply new network settings and probe the plane; returns (snapshot to revert to, problem or None)."""
    return console.try_network(system, settings, lambda: network.apply_network(system, settings))


def keep_network(system: System, settings: Settings) -> None:
    """The operator confirmed: remember the settings for the next reconfiguration."""
    applier.remember(system, settings)


def revert_network(system: System, previous: bytes | None) -> None:
    """Not confirmed: put the old network file back."""
    console.revert_network(system, previous)
