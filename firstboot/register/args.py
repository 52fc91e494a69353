"""The command line of `firstboot register`, apart from the enrolment itself.

firstboot.register.client imports aiohttp and cryptography: about 20 MiB of memory and seconds of
start-up on an emulated CPU. Every `firstboot` command builds the whole parser, the console
wizards and the status console included, so the parser must not pull those in; the enrolment
code is imported when `register` actually runs.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from gwcore.cli import run_command
from gwcore.paths import STATE_DIR as DEFAULT_STATE_DIR

DESCRIPTION = "Enrol this gateway with the management plane: redeem a join token, keep the identity."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `firstboot register` (and of `python -m firstboot.register.client`)."""
    parser.add_argument(
        "--token", required=True, help="join token from 'mgmtplane token create' ('-' reads stdin)"
    )
    parser.add_argument(
        "--state-dir", default=str(DEFAULT_STATE_DIR), help="identity directory (%(default)s)"
    )
    parser.add_argument("--proxy", help="outbound HTTP CONNECT proxy, http://[user:pass@]host:port")
    parser.add_argument("--hostname", help="host name reported to the plane (default: this host's)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole exchange")
    parser.add_argument("--force", action="store_true", help="register again even if an identity exists")
    parser.set_defaults(func=_run)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `firstboot register` subcommand on a subparsers object."""
    parser = sub.add_parser("register", help="enrol this gateway with a join token", description=DESCRIPTION)
    add_arguments(parser)


def _run(args: argparse.Namespace) -> int:
    # The enrolment client loads aiohttp and cryptography: only when a registration runs. This is
    # the only edge between the two modules (the client does not import this one): no cycle.
    from firstboot.register.client import run_register

    return run_register(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: `python -m firstboot.register --token T --state-dir DIR`."""
    parser = argparse.ArgumentParser(prog="firstboot register", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s"
    )
    return run_command(args.func, args, debug=args.debug)
