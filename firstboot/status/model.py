"""The status console after first boot (like a hypervisor's DCUI): what the appliance is doing, and a menu."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from firstboot import apply as applier
from firstboot.apply import gateway, network
from firstboot.settings import Settings, build
from firstboot.system import System, read_os_release
from gwcore import status_file
from gwcore.errors import UserError
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
    report = status_file.decode(_read_json(system.path(STATUS_FILE)))
    if report is None:
        tunnel, last_error, targets = "unknown (the gateway has not reported)", "", "?"
    else:
        stale = status_file.staleness(report, now, _pid_alive(system, report.pid))
        tunnel = describe_tunnel(report, now, stale)
        last_error = report.last_error or ""
        if report.stop_reason and last_error == report.stop_reason:
            last_error = "the reason it stopped, above"
        targets = str(report.targets) if report.targets is not None else "?"
        relayed = f"{report.relayed} calls since the gateway started, {report.streams_open} open"
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
    )


def render(info: StatusInfo) -> list[str]:
    """The status as lines (pure)."""
    lines = [
        f"Gateway appliance {info.version}",
        "",
        f"Host name:    {info.hostname}",
    ]
    lines += [f"Address:      {a}" for a in info.addresses] or ["Address:      (none)"]
    lines += [
        f"Plane:        {info.plane_url}",
        f"Gateway id:   {info.gateway_id}",
        f"Service:      {info.service}",
        f"Tunnel:       {info.tunnel}",
        f"Targets:      {info.targets}",
    ]
    if info.relayed:
        lines.append(f"Relayed:      {info.relayed}")
    lines += [
        f"Last error:   {info.last_error}",
    ]
    lines += list(info.notes)
    return lines


# ---------------------------------------------------------------- menu actions (shared by both views)


def current_settings(system: System) -> Settings | None:
    """The settings first boot applied (state.json), to start a reconfiguration from."""
    return applier.saved_settings(system)


def reregister(system: System, token: str, *, proxy_url: str | None = None) -> str:
    """Register with a new token in a fresh directory, swap it in, rewrite the config, restart the gateway."""
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
    from firstboot.wizard.flow import probe_until

    previous = network.snapshot(system)
    network.apply_network(system, settings)
    return previous, probe_until(settings.plane_url, settings.proxy_url)


def keep_network(system: System, settings: Settings) -> None:
    """The operator confirmed: remember the settings for the next reconfiguration."""
    applier.remember(system, settings)


def revert_network(system: System, previous: bytes | None) -> None:
    """Not confirmed: put the old network file back."""
    network.restore(system, previous)


# ---------------------------------------------------------------- line view


def line_console(
    system: System, inp: TextIO = sys.stdin, out: TextIO = sys.stdout, *, revert_after: float = 60.0
) -> int:
    """A numbered menu for terminals urwid cannot drive."""
    from firstboot.support import create_bundle

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    def do_register() -> None:
        out.write("New join token: ")
        out.flush()
        token = inp.readline().strip()
        if token:
            say(f"Registered as gateway {reregister(system, token)}")

    def do_bundle() -> None:
        say(f"Support bundle written to {create_bundle(system)}")

    def power(which: str) -> Callable[[], None]:
        def act() -> None:
            system.run(POWER[which], check=False)

        return act

    def do_network() -> None:
        from firstboot.wizard.line import LineWizard
        from firstboot.wizard.model import BY_NAME, WizardModel
        from firstboot.wizard.session import Session

        old = current_settings(system)
        if old is None:
            say("No saved settings: run the wizard first.")
            return
        model = WizardModel(values=old.raw(), sources=dict.fromkeys(old.raw(), "current"))
        wizard = LineWizard(
            Session(system=system, model=model, revert_after=revert_after), inp, out, watch_done=False
        )
        wizard.ask_screen(BY_NAME["network"])
        new = model.settings()
        previous, problem = try_network(system, new)
        say("The plane is reachable." if problem is None else f"The plane is NOT reachable: {problem}")
        if wizard.confirm(
            f"Keep these network settings? [y/n] (reverting in {revert_after:g} s)", timeout=revert_after
        ):
            keep_network(system, new)
            say("Kept.")
        else:
            revert_network(system, previous)
            say("Network settings rolled back.")

    actions: dict[str, tuple[str, Callable[[], None]]] = {
        "1": ("Reconfigure network", do_network),
        "2": ("Re-register with a new join token", do_register),
        "3": ("Create a support bundle", do_bundle),
        "4": ("Reboot", power("reboot")),
        "5": ("Shut down", power("poweroff")),
    }
    while True:
        for line in render(gather(system)):
            say(line)
        say()
        for key, (label, _) in actions.items():
            say(f"  {key}) {label}")
        say("  Enter) refresh")
        out.write("Choice: ")
        out.flush()
        choice = inp.readline()
        if not choice:
            return 0
        action = actions.get(choice.strip())
        if action is not None:
            try:
                action[1]()
            except UserError as exc:
                say(f"FAILED: {exc}")


def cmd_status(args: argparse.Namespace) -> int:
    """Show the status console (or print the status once)."""
    system = System.for_args(args.root)
    if args.once:
        print("\n".join(render(gather(system))))
        return 0
    from firstboot.wizard.cli import want_line_mode

    if args.line or want_line_mode(os.environ.get("TERM"), args.console, sys.stdout.isatty()):
        return line_console(system, revert_after=args.revert_after)
    from firstboot.status.tui import run_status_tui

    return run_status_tui(system, revert_after=args.revert_after)


def add_parser(sub: Any) -> None:
    """Register `firstboot status`."""
    p = sub.add_parser("status", help="the status console (tty1 after first boot)")
    p.add_argument("--once", action="store_true", help="print the status and exit")
    p.add_argument("--line", action="store_true", help="plain numbered menu")
    p.add_argument("--console", metavar="TTY", help="the tty this runs on")
    p.add_argument(
        "--revert-after", type=float, default=60.0, metavar="SECONDS", help="network rollback timeout"
    )
    p.set_defaults(func=cmd_status)
