"""`gateway run`: the daemon's subcommand (registered into gateway.cli's table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.config import DEFAULT_CONFIG, load_config


def _run(args: argparse.Namespace) -> int:
    from gateway.daemon import run_daemon  # the daemon's imports are only needed for `run`

    return run_daemon(load_config(args.config), debug=args.debug, config_path=args.config)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `gateway run --config PATH`."""
    run = sub.add_parser("run", help="run the tunnel daemon (systemd Type=notify)")
    run.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"gateway.yaml (default {DEFAULT_CONFIG})"
    )
    run.set_defaults(func=_run)
