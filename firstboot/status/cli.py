"""`firstboot status`: the status console (tty1 after first boot), or the status printed once."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from firstboot.system import System
from firstboot.wizard.cli import want_line_mode


def cmd_status(args: argparse.Namespace) -> int:
    """Show the status console (or print the status once)."""
    # Here, not at the top: every `firstboot` command builds this parser, and the consoles' modules
    # (the wizard's views, the support bundle) are start-up cost for all the others.
    from firstboot.status.line import line_console
    from firstboot.status.model import gather, render

    system = System.for_args(args.root)
    if args.once:
        print("\n".join(render(gather(system))))
        return 0
    if args.line or want_line_mode(os.environ.get("TERM"), args.console, sys.stdout.isatty()):
        return line_console(system, revert_after=args.revert_after)
    from firstboot.status.tui import run_status_tui  # urwid: only when the urwid console runs

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
