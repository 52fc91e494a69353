"""Command-line entry for `firstboot`: run (the boot service), plan, and the subcommands modules register."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from firstboot import apply as applier
from firstboot.errors import FirstbootError
from firstboot.seeds import Resolved, SeedContext, resolve
from firstboot.settings import Settings, build, check_cross, check_fields, missing
from firstboot.system import System, atomic_write
from gwcore.cli import run_command
from gwcore.deploy import BY_KEY, KEYS, masked
from gwcore.errors import UserError

log = logging.getLogger(__name__)

SubParsers = "argparse._SubParsersAction[argparse.ArgumentParser]"
WHAT_NEXT = (
    "what to do: fix the setting on the console wizard (tty1 or the serial console), "
    "or correct the seed and reboot; `firstboot run` retries and resumes where it stopped"
)


def seed_context(args: argparse.Namespace, system: System) -> SeedContext:
    """The seed context from --credentials/--ovf-env (explicit files switch hardware probing off)."""
    creds = getattr(args, "credentials", None)
    ovf = getattr(args, "ovf_env", None)
    return SeedContext(
        system=system,
        credentials_dir=Path(creds) if creds else None,
        ovf_env_file=Path(ovf) if ovf else None,
        probe=not (creds or ovf),
    )


def plan_report(resolved: Resolved) -> dict[str, Any]:
    """The plan as a JSON-able dict: masked values with their sources, missing keys and problems."""
    good, problems = check_fields(resolved.values)
    if not problems:
        problems = check_cross(good)
    shown: dict[str, Any] = {}
    for key in KEYS:
        if key in good:
            shown[key] = {
                "value": masked(key, good[key]),
                "source": resolved.sources[key],
                "secret": BY_KEY[key].secret,
            }
    if "gateway.plane_url" not in good and not problems and "gateway.join_token" in good:
        settings = build(good)
        shown["gateway.plane_url"] = {"value": settings.plane_url, "source": "join-token", "secret": False}
    return {
        "settings": shown,
        "missing": missing(good),
        "problems": problems,
        "complete": not problems and not missing(good),
    }


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the resolved settings without applying anything."""
    system = System.for_args(args.root)
    report = plan_report(resolve(seed_context(args, system)))
    print(json.dumps(report, indent=2))
    if report["problems"]:
        print(f"error: {report['problems'][0]}", file=sys.stderr)
        return 1
    return 0


def print_progress(step: applier.Step, event: str) -> None:
    """Progress lines for the console (the service's output goes to journal+console)."""
    marks = {"start": "....", "done": " OK ", "skip": "done", "fail": "FAIL"}
    if event != "start":
        print(f"[{marks[event]}] {step.title}", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    """What firstboot.service runs: seeds -> validate -> apply, or leave the rest to the console wizard."""
    system = System.for_args(args.root)
    if applier.is_done(system):
        print("first boot already completed", flush=True)
        return 0
    resolved = resolve(seed_context(args, system))
    settings: Settings | None
    if missing(resolved.values):
        settings = applier.saved_settings(system)
        if settings is None:
            print("first boot: settings incomplete (no join token); the console wizard will ask", flush=True)
            return 0
    else:
        try:
            settings = build(resolved.values, resolved.sources)
        except FirstbootError as exc:
            _record_error(system, f"Settings: {exc}")
            raise FirstbootError(f"seed settings: {exc}", WHAT_NEXT) from None
    try:
        applier.apply(
            system, settings, plan=applier.steps(simulate_register=args.dry_run), progress=print_progress
        )
    except FirstbootError as exc:
        raise FirstbootError(str(exc), WHAT_NEXT) from None
    print("first boot complete: the gateway is starting", flush=True)
    return 0


def _record_error(system: System, text: str) -> None:
    atomic_write(system.path(applier.ERROR_FILE), text + "\n")


def _registrars() -> list[Callable[[Any], None]]:
    from firstboot.register.args import add_parser as add_register
    from firstboot.status.cli import add_parser as add_status
    from firstboot.support import add_parser as add_support
    from firstboot.wizard.cli import add_parser as add_wizard

    return [add_wizard, add_status, add_support, add_register]


def build_parser() -> argparse.ArgumentParser:
    """The `firstboot` argument parser."""
    parser = argparse.ArgumentParser(prog="firstboot", description="Gateway appliance first boot")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "--root", metavar="DIR", help="act on a directory tree instead of / (commands are recorded)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="apply seeds at boot (what firstboot.service runs)")
    p.add_argument("--dry-run", action="store_true", help="do not contact the plane")
    p.set_defaults(func=cmd_run, credentials=None, ovf_env=None)

    p = sub.add_parser("plan", help="print the resolved settings as JSON (secrets masked); applies nothing")
    p.add_argument("--ovf-env", metavar="FILE", help="read this ovf-env.xml instead of probing the hardware")
    p.add_argument(
        "--credentials", metavar="DIR", help="credentials directory (default $CREDENTIALS_DIRECTORY)"
    )
    p.set_defaults(func=cmd_plan)

    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors become `error: ...` and exit code 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("urwid").setLevel(logging.WARNING)  # its debug log is one line per redraw
    return run_command(args.func, args, UserError, args.debug)
