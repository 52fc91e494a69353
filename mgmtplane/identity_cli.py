"""`mgmtplane` commands of the identity lifecycle: gateway revoke/delete, ca status/rollover, settings.

They change the state dir under its lock, whether `serve` runs or not; a running `serve` sees the
change within a second (mgmtplane.identity watches the files) and acts on live tunnels.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mgmtplane import rollover
from mgmtplane.errors import PlaneError
from mgmtplane.identity import revoke
from mgmtplane.registry import ACTIVE, Registry
from mgmtplane.settings import (
    MAX_CERT_LIFETIME,
    MIN_CERT_LIFETIME,
    format_duration,
    load_settings,
    parse_duration,
    save_settings,
)

WithStateDir = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def _record_or_fail(registry: Registry, gateway_id: str) -> Any:
    record = registry.get(gateway_id)
    if record is None:
        raise PlaneError(f"no registered gateway {gateway_id}", hint="see 'mgmtplane gateways'")
    return record


def cmd_revoke(args: argparse.Namespace) -> int:
    """`mgmtplane gateway revoke ID`."""
    registry = Registry(Path(args.state_dir))
    _record_or_fail(registry, args.gateway)
    record = revoke(registry, args.gateway)
    assert record is not None
    print(f"revoked gateway {record.gateway_id} ({record.hostname or '-'}) at {record.revoked_at};"
          " a running plane closes its tunnel within a second")  # fmt: skip
    print(f"to enrol it again with the same id: mgmtplane token create --gateway {record.gateway_id}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """`mgmtplane gateway delete ID`."""
    record = Registry(Path(args.state_dir)).remove(args.gateway)
    if record is None:
        raise PlaneError(f"no registered gateway {args.gateway}", hint="see 'mgmtplane gateways'")
    print(f"deleted gateway {record.gateway_id} ({record.hostname or '-'});"
          " a running plane closes its tunnel within a second")  # fmt: skip
    return 0


def _on_old_ca(state_dir: Path, cas: rollover.CASet) -> list[str]:
    """Active gateways whose current certificate is not from the CA that signs now."""
    return [
        f"{r.gateway_id} ({r.hostname or '-'})"
        for r in Registry(state_dir).all()
        if r.state == ACTIVE and r.issuer != cas.signing.spki_hash
    ]


def cmd_ca_status(args: argparse.Namespace) -> int:
    """`mgmtplane ca status`: the CA set, and where the gateways are."""
    state_dir = Path(args.state_dir)
    cas = rollover.load_ca_set(state_dir, create=False)
    print(f"phase:    {cas.phase}{f' (since {cas.started_at})' if cas.started_at else ''}")
    for ca in cas.trusted:
        roles = [n for n, c in (("server", cas.server), ("signing", cas.signing)) if c is ca]
        until = ca.cert.not_valid_after_utc.strftime("%Y-%m-%d")
        print(f"ca:       {ca.spki_hash}  until {until}  {'+'.join(roles) or 'trusted'}")
    behind = _on_old_ca(state_dir, cas)
    print(f"gateways: {len(behind)} not yet on the signing CA" + (": " + ", ".join(behind) if behind else ""))
    return 0


def cmd_rollover(args: argparse.Namespace) -> int:
    """`mgmtplane ca rollover start|reissue|retire|cancel`."""
    state_dir = Path(args.state_dir)
    rollover.load_ca_set(state_dir, create=False)  # a plane that never ran has nothing to roll
    if args.step == "retire" and not args.force:
        behind = _on_old_ca(state_dir, rollover.load_ca_set(state_dir, create=False))
        if behind:
            raise PlaneError(
                f"{len(behind)} gateways still hold certificates of the old CA: {', '.join(behind[:10])}",
                hint="wait for them to renew (see 'mgmtplane ca status');"
                " or --force, and they must then re-enrol",
            )
    step = {"start": rollover.start, "reissue": rollover.reissue, "retire": rollover.retire,
            "cancel": rollover.cancel}[args.step]  # fmt: skip
    cas = step(state_dir)
    words = {
        "start": "new CA added: gateways are told to trust it; next: 'mgmtplane ca rollover reissue'",
        "reissue": "the new CA signs renewals: gateways renew soon; next, once 'mgmtplane ca status' shows"
        " none left: 'mgmtplane ca rollover retire'",
        "retire": "the old CA is retired: the server certificate and every signature come from the new one",
        "cancel": "rollover cancelled: the new CA is gone",
    }[args.step]
    print(f"{words} (phase {cas.phase}, signing CA {cas.signing.spki_hash})")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """`mgmtplane settings [--cert-lifetime D]`."""
    state_dir = Path(args.state_dir)
    settings = load_settings(state_dir)
    if args.cert_lifetime is not None:
        lifetime = parse_duration(args.cert_lifetime, "--cert-lifetime", MIN_CERT_LIFETIME, MAX_CERT_LIFETIME)
        settings = type(settings)(cert_lifetime=lifetime)
        save_settings(state_dir, settings)
    renew = dt.timedelta(seconds=round(settings.cert_lifetime * 2 / 3))
    print(f"cert_lifetime: {format_duration(settings.cert_lifetime)} (gateways renew after about {renew})")
    return 0


def add_parsers(sub: Any, with_state_dir: WithStateDir) -> None:
    """Register `gateway`, `ca` and `settings` on the `mgmtplane` parser."""
    gateway = sub.add_parser("gateway", help="one gateway: revoke, delete").add_subparsers(
        dest="gateway_command", required=True
    )
    p = with_state_dir(
        gateway.add_parser("revoke", help="refuse its certificate from now on, close its tunnel")
    )
    p.add_argument("gateway", metavar="ID", help="gateway id")
    p.set_defaults(func=cmd_revoke)
    p = with_state_dir(gateway.add_parser("delete", help="forget the gateway, close its tunnel"))
    p.add_argument("gateway", metavar="ID", help="gateway id")
    p.set_defaults(func=cmd_delete)

    ca = sub.add_parser("ca", help="the plane's CAs: status, rollover").add_subparsers(
        dest="ca_command", required=True
    )
    p = with_state_dir(ca.add_parser("status", help="the CA set and the gateways not yet on the signing CA"))
    p.set_defaults(func=cmd_ca_status)
    p = with_state_dir(ca.add_parser("rollover", help="roll the CA: start, reissue, retire (or cancel)"))
    p.add_argument("step", choices=["start", "reissue", "retire", "cancel"])
    p.add_argument("--force", action="store_true", help="retire even with gateways still on the old CA")
    p.set_defaults(func=cmd_rollover)

    p = with_state_dir(sub.add_parser("settings", help="show or change the identity settings"))
    p.add_argument(
        "--cert-lifetime", metavar="DURATION", help="gateway certificate lifetime, e.g. 90d, 12h, 30s"
    )
    p.set_defaults(func=cmd_settings)
