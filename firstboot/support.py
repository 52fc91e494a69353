"""`firstboot support-bundle`: journal + config tarball with secrets redacted, for support.

What goes in and how it is redacted is gwcore.support_bundle's (shared with the gateway). Here:
where it goes. On the console, a file under /var/lib/gateway-support (the newest KEEP kept, so
repeated presses never fill /var); with --stdout, the bytes on standard output, which is how the
gateway-support socket hands a complete bundle to the unprivileged gateway (docs/operate.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from firstboot.system import System, atomic_write
from gwcore import support_bundle

OUT_DIR = "/var/lib/gateway-support"
KEEP = 5  # bundles kept on the appliance; tmpfiles.d also ages them out after 30 days


def bundle_bytes(system: System) -> bytes:
    """The bundle, built from the system (or a --root tree) as tar.gz bytes."""

    def read(name: str) -> bytes | None:
        try:
            return system.path(name).read_bytes()
        except OSError:
            return None

    def run(argv: Sequence[str]) -> str:
        try:
            proc = system.run(list(argv), check=False, timeout=60)
        except Exception as exc:  # a missing tool must not stop the bundle
            return f"{argv[0]}: {exc}\n"
        return proc.stdout + proc.stderr

    def tail(name: str, size: int) -> bytes | None:
        return support_bundle.read_tail(system.path(name), size)

    return support_bundle.build(read, run, tail=tail)


def prune(directory: Path, keep: int = KEEP) -> list[Path]:
    """Remove all but the newest `keep` bundles; returns what was removed."""
    bundles = sorted(directory.glob("support-*.tar.gz"), key=lambda p: p.name, reverse=True)
    removed = []
    for old in bundles[keep:]:
        try:
            old.unlink()
        except OSError:
            continue
        removed.append(old)
    return removed


def create_bundle(system: System) -> Path:
    """Write the bundle (0600) under /var/lib/gateway-support, keep the newest KEEP, return its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = bundle_bytes(system)
    path = system.path(OUT_DIR) / f"support-{stamp}.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, data, mode=0o600)
    prune(path.parent)
    return path


def cmd_support_bundle(args: argparse.Namespace) -> int:
    """Create a support bundle and print its path (or, with --stdout, write the bundle there)."""
    system = System.for_args(args.root)
    if args.stdout:
        sys.stdout.buffer.write(bundle_bytes(system))
        sys.stdout.buffer.flush()
        return 0
    print(create_bundle(system))
    return 0


def add_parser(sub: Any) -> None:
    """Register `firstboot support-bundle`."""
    p = sub.add_parser(
        "support-bundle", help="write logs + config (secrets redacted) to /var/lib/gateway-support"
    )
    p.add_argument(
        "--stdout", action="store_true", help="write the tar.gz to standard output instead (for the gateway)"
    )
    p.set_defaults(func=cmd_support_bundle)
