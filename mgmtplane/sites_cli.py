"""`mgmtplane site list|show|set-priority` (docs/sites.md).

`set-priority` writes sites.json in the state dir (atomically, under its lock); the running plane
reads it again within a second. `show` and `list` ask the running plane, and fall back to the
state dir (members and priorities, with `?` for what only the plane knows) when it is not running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mgmtplane.errors import PlaneError
from mgmtplane.operate_cli import add_api_flags, api_from_args
from mgmtplane.registry import REVOKED, Registry
from mgmtplane.site_store import load_priorities, set_priority
from mgmtplane.sites import DEFAULT_PRIORITY, check_priority, check_site


def _resolve_member(state_dir: Path, site: str, name: str) -> str:
    """The id of a gateway of `site`, by id or registered host name; one-line errors otherwise."""
    records = Registry(state_dir).all()
    found = [r for r in records if r.gateway_id == name] or [r for r in records if r.hostname == name]
    if not found:
        raise PlaneError(
            f"GATEWAY: {name!r} is neither a registered gateway id nor a hostname in {state_dir}"
        )
    if len(found) > 1:
        raise PlaneError(f"GATEWAY: hostname {name!r} names {len(found)} gateways; use the gateway id")
    record = found[0]
    if record.site != site:
        where = f"site {record.site!r}" if record.site else "no site"
        raise PlaneError(f"GATEWAY: {record.gateway_id} is in {where}, not in site {site!r}")
    return record.gateway_id


def _parse_priority(text: str) -> int | None:
    if text == "default":
        return None
    try:
        value = int(text, 10)
    except ValueError:
        raise PlaneError(f"PRIORITY: expected an integer or 'default', got {text!r}") from None
    return check_priority(value, "PRIORITY")


def cmd_set_priority(args: argparse.Namespace) -> int:
    """`mgmtplane site set-priority SITE GATEWAY N|default`."""
    state_dir = Path(args.state_dir)
    site = check_site(args.site, "SITE")
    priority = _parse_priority(args.priority)
    gateway_id = _resolve_member(state_dir, site, args.gateway)
    set_priority(state_dir, site, gateway_id, priority)
    shown = DEFAULT_PRIORITY if priority is None else priority
    print(f"site {site}: gateway {gateway_id} priority {shown}{' (default)' if priority is None else ''}")
    return 0


def _offline_view(state_dir: Path, site: str) -> dict[str, Any] | None:
    members = [r for r in Registry(state_dir).all() if r.site == site and r.state != REVOKED]
    if not members:
        return None
    prios = load_priorities(state_dir).get(site, {})
    members.sort(key=lambda r: (-prios.get(r.gateway_id, DEFAULT_PRIORITY), r.gateway_id))
    gateways: list[dict[str, Any]] = [
        {
            "gateway_id": r.gateway_id,
            "hostname": r.hostname,
            "connected": None,
            "draining": None,
            "priority": prios.get(r.gateway_id, DEFAULT_PRIORITY),
            "streams_open": None,
            "targets": {},
        }
        for r in members
    ]
    return {"site": site, "gateways": gateways}


def _cell(value: object) -> str:
    if value is None:
        return "?"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def print_site(view: dict[str, Any], out: Any = sys.stdout) -> None:
    """The site as a table: one line per gateway, then one per target with each gateway's reach."""
    print(f"site {view['site']}", file=out)
    print(f"  {'gateway':36}  {'host':16}  {'tunnel':8}  {'prio':>5}  {'streams':>7}", file=out)
    targets: set[str] = set()
    for g in view["gateways"]:
        tunnel = (
            "?"
            if g["connected"] is None
            else "draining"
            if g["draining"]
            else "up"
            if g["connected"]
            else "down"
        )
        print(
            f"  {g['gateway_id']:36}  {g['hostname'][:16]:16}  {tunnel:8}  {g['priority']:>5}"
            f"  {_cell(g['streams_open']):>7}",
            file=out,
        )
        targets.update(g["targets"])
    for name in sorted(targets):
        reach = ", ".join(
            f"{g['gateway_id'][:8]} {g['targets'].get(name, {}).get('reach', 'unknown')}"
            for g in view["gateways"]
        )
        print(f"  target {name}: {reach}", file=out)


def cmd_show(args: argparse.Namespace) -> int:
    """`mgmtplane site show NAME`: from the running plane, else from the state dir."""
    site = check_site(args.site, "SITE")
    state_dir = Path(args.state_dir)
    try:
        with api_from_args(args).open(f"/v1/sites/{site}") as resp:
            view = json.loads(resp.read())
    except PlaneError as exc:
        if "cannot reach the plane" not in str(exc):
            raise
        print(f"warning: {exc}; showing the state dir only", file=sys.stderr)
        offline = _offline_view(state_dir, site)
        if offline is None:
            raise PlaneError(f"SITE: no gateway is enrolled in site {site!r}") from None
        view = offline
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
    else:
        print_site(view)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """`mgmtplane site list`: the sites of the registry, with their gateway counts."""
    counts: dict[str, int] = {}
    for record in Registry(Path(args.state_dir)).all():
        if record.site and record.state != REVOKED:
            counts[record.site] = counts.get(record.site, 0) + 1
    for site, n in sorted(counts.items()):
        print(f"{site}  {n} gateway{'s' if n != 1 else ''}")
    return 0


def add_parsers(sub: Any, with_state_dir: Any) -> None:
    """Register `site` on the `mgmtplane` parser."""
    site = sub.add_parser("site", help="sites of several gateways: list, show, set-priority").add_subparsers(
        dest="site_command", required=True
    )
    p = with_state_dir(site.add_parser("list", help="the sites and their gateway counts"))
    p.set_defaults(func=cmd_list)
    p = with_state_dir(site.add_parser("show", help="a site's gateways, priorities, load and reachability"))
    p.add_argument("site", metavar="SITE")
    p.add_argument("--json", action="store_true", help="the plane's JSON as it is")
    add_api_flags(p)
    p.set_defaults(func=cmd_show)
    p = with_state_dir(
        site.add_parser("set-priority", help="prefer a gateway of a site (higher first); 'default' clears it")
    )
    p.add_argument("site", metavar="SITE")
    p.add_argument("gateway", metavar="GATEWAY", help="gateway id (or its registered hostname)")
    p.add_argument(
        "priority", metavar="PRIORITY", help="an integer from -1000 to 1000 (default 0), or 'default'"
    )
    p.set_defaults(func=cmd_set_priority)
