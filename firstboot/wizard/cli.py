"""`firstboot wizard`: pick the view (urwid or line mode) and wire model, flow and system together."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from firstboot import apply as applier
from firstboot.system import System
from firstboot.wizard.flow import dry_run_root, handoff
from firstboot.wizard.model import load_answers
from firstboot.wizard.session import Session, load_model

# Terminals urwid cannot drive well; a serial console's default TERM (vt220) gets line mode too.
DUMB_TERMS = {"", "dumb", "unknown", "vt100", "vt102", "vt220"}


def want_line_mode(term: str | None, console: str | None, stdout_tty: bool) -> bool:
    """Line mode when asked, on a dumb/unknown terminal, or on a serial console without a capable TERM."""
    term = term or ""
    if not stdout_tty or term in ("", "dumb", "unknown"):
        return True
    serial = bool(console) and str(console).startswith(("ttyS", "hvc", "ttyAMA", "ttyUSB"))
    return serial and term in DUMB_TERMS


def cmd_wizard(args: argparse.Namespace) -> int:
    """Run the console wizard."""
    root = args.root
    scratch = None
    if args.dry_run and root is None:
        scratch = dry_run_root()
        root = str(scratch)
    system = System.for_args(root)
    if applier.is_done(system) and not args.dry_run:
        print("first boot is already complete; use `firstboot status` to reconfigure")
        handoff(system, args.console)
        return 0
    answers = load_answers(args.answers) if args.answers else None
    session = Session(
        system=system,
        model=load_model(system, probe=system.live),
        answers=answers,
        simulate_register=args.dry_run,
        revert_after=args.revert_after,
        console=args.console,
        dry_run_root=scratch,
    )
    if args.line or want_line_mode(os.environ.get("TERM"), args.console, sys.stdout.isatty()):
        from firstboot.wizard.line import LineWizard

        return LineWizard(session).run()
    from firstboot.wizard.tui import run_tui

    return run_tui(session)


def add_parser(sub: Any) -> None:
    """Register `firstboot wizard`."""
    p = sub.add_parser("wizard", help="the console wizard (urwid, or line mode on dumb terminals)")
    p.add_argument(
        "--dry-run", action="store_true", help="touch nothing: write into a scratch tree, skip registration"
    )
    p.add_argument(
        "--answers", metavar="FILE", type=Path, help="YAML answers that drive the wizard unattended"
    )
    p.add_argument("--line", action="store_true", help="plain line mode (one question per line)")
    p.add_argument("--console", metavar="TTY", help="the tty this runs on (the unit passes %%i)")
    p.add_argument(
        "--revert-after",
        metavar="SECONDS",
        type=float,
        default=60.0,
        help="network rollback timeout (%(default)s)",
    )
    p.set_defaults(func=cmd_wizard)
