"""Command line of the updater: install, health, status. Errors are one line in the journal."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from updater.errors import UpdateError

log = logging.getLogger("updater")
IDENTIFIER = "appliance-update"


def setup_logging(debug: bool) -> None:
    """stderr always; the journal too when stderr is not already going there (a shell, an agent)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setFormatter(logging.Formatter("%(message)s"))
    if not os.environ.get("JOURNAL_STREAM") and os.path.exists("/run/systemd/journal/socket"):
        try:
            from systemd.journal import JournalHandler

            handlers.append(JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER))
        except ImportError:
            pass
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def cmd_install(args: argparse.Namespace) -> int:
    from updater.install import install
    from updater.rauc import Rauc
    from updater.system import Appliance

    done = install(Appliance(), Rauc(), args.bundle.absolute(), allow_downgrade=args.allow_downgrade)
    log.info("installed %s into slot %s in %.0f s; the next boot tries it once and falls back unless healthy",
             done.version, done.slot, done.seconds)  # fmt: skip
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from updater.health import Systemd, health
    from updater.rauc import Rauc
    from updater.system import Appliance

    return health(Appliance(), Rauc(), Systemd())


def cmd_status(args: argparse.Namespace) -> int:
    from updater import state
    from updater.rauc import Rauc
    from updater.system import Appliance

    app = Appliance()
    conf = app.rauc()
    out = {
        "booted": app.booted_slot(),
        "version": app.version(),
        "compatible": conf.compatible,
        "grubenv": Rauc().grubenv(conf.grubenv),
        "state": state.load(app.state_file),
    }
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def cmd_serve_request(args: argparse.Namespace) -> int:
    from updater.request import Helper, serve

    helper = Helper()
    if args.updates_dir is not None:
        helper.updates_dir = args.updates_dir.absolute()
    if args.incoming_dir is not None:
        helper.incoming_dir = args.incoming_dir.absolute()
    if args.install_command is not None:
        helper.install_command = (args.install_command,)
    if args.reboot_command is not None:
        helper.reboot_command = (args.reboot_command,)
    if args.status_command is not None:
        helper.status_command = (args.status_command,)
    return serve(helper, sys.stdin.buffer, sys.stdout.buffer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="updater", description="A/B updates of the gateway appliance")
    parser.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("install", help="check a bundle and install it into the other slot")
    p.add_argument("bundle", type=Path)
    p.add_argument("--allow-downgrade", action="store_true",
                   help="install a version that is not newer (the plane marks such a release)")  # fmt: skip
    p.set_defaults(func=cmd_install)
    p = sub.add_parser("health", help="mark the booted slot good when healthy, or roll it back (at boot)")
    p.set_defaults(func=cmd_health)
    p = sub.add_parser("status", help="the booted slot, grub's slot state and the last update, as JSON")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("serve-request", help="answer one gateway request on stdin (the socket's unit)")
    # For tests on a host without slots; the image's unit passes none of these.
    p.add_argument("--updates-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--incoming-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--install-command", help=argparse.SUPPRESS)
    p.add_argument("--reboot-command", help=argparse.SUPPRESS)
    p.add_argument("--status-command", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve_request)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    try:
        return int(args.func(args))
    except UpdateError as exc:
        log.error("%s", exc.message)
        return 1
    except Exception as exc:
        if args.debug:
            raise
        log.error(
            "unexpected error: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""
        )
        return 2
