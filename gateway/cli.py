"""Command-line entry for `gateway`: a table of subcommands, each registered by its module."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from gwcore.cli import run_command
from gwcore.errors import UserError

# Each entry adds its subcommand(s) to the parser and sets `func` (args -> exit code) on them.
# Modules own their own subcommands; this file only wires them together.
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrars() -> list[Registrar]:
    from gateway.daemon_cli import add_parsers as add_daemon_parsers
    from gateway.filter.policy_cli import add_parsers as add_policy_parsers

    return [add_policy_parsers, add_daemon_parsers]


def build_parser() -> argparse.ArgumentParser:
    """The `gateway` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="gateway", description="Gateway appliance daemon and tools")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors become `error: ...` and exit code 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(message)s"
    )
    return run_command(args.func, args, UserError, args.debug)
