"""`mgmtplane release add/list/remove` and `mgmtplane rollout start/status/halt/resume`.

They change the state dir under its lock, whether `serve` runs or not; a running plane picks the
change up at its next planning round (at most mgmtplane.rollout.PLAN_INTERVAL seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gwcore.update import UpdateState
from mgmtplane.errors import PlaneError
from mgmtplane.operate_cli import add_api_flags, api_from_args
from mgmtplane.registry import Registry, state_lock, utc_now_iso
from mgmtplane.releases import DEFAULT_PRODUCT, add_release, default_keyring, load_releases, remove_release
from mgmtplane.rollout import RolloutStore, in_use, load_statuses, new_rollout_id, rollout_from_json
from mgmtplane.rollout_plan import Facts, Phase, Rollout, parse_window, resume

WithStateDir = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


# --- releases ---------------------------------------------------------------------------------------


def cmd_release_add(args: argparse.Namespace) -> int:
    """`mgmtplane release add BUNDLE`."""
    keyring = Path(args.keyring) if args.keyring else default_keyring()
    release = add_release(
        Path(args.state_dir),
        Path(args.bundle),
        keyring=keyring,
        product=args.compatible,
        urgent=args.urgent,
        downgrade=args.downgrade,
    )
    flags = " ".join(f for f, on in (("urgent", release.urgent), ("downgrade", release.downgrade)) if on)
    print(
        f"release {release.version} ({release.compatible}): {release.size} bytes, sha256 {release.sha256}"
        + (f" [{flags}]" if flags else "")
    )
    print(f"roll it out: mgmtplane rollout start {release.version}")
    return 0


def cmd_release_list(args: argparse.Namespace) -> int:
    """`mgmtplane release list`."""
    releases = load_releases(Path(args.state_dir))
    print(f"{'VERSION':16}  {'SIZE':>12}  {'ADDED':25}  {'FLAGS':16}  SHA256")
    for r in sorted(releases.values(), key=lambda r: r.added_at):
        flags = ",".join(f for f, on in (("urgent", r.urgent), ("downgrade", r.downgrade)) if on) or "-"
        print(f"{r.version:16}  {r.size:>12}  {r.added_at:25}  {flags:16}  {r.sha256}")
    return 0


def cmd_release_remove(args: argparse.Namespace) -> int:
    """`mgmtplane release remove VERSION`."""
    state_dir = Path(args.state_dir)
    release = remove_release(state_dir, args.version, in_use(state_dir))
    print(f"removed release {release.version}")
    return 0


# --- rollouts ---------------------------------------------------------------------------------------


def _ids(text: str, what: str) -> tuple[str, ...]:
    ids = tuple(dict.fromkeys(i.strip() for i in text.split(",") if i.strip()))
    if not ids:
        raise PlaneError(f"{what}: expected gateway ids separated by commas")
    return ids


def cmd_rollout_start(args: argparse.Namespace) -> int:
    """`mgmtplane rollout start VERSION ...`: the new current rollout (it replaces an unfinished one)."""
    state_dir = Path(args.state_dir)
    release = load_releases(state_dir).get(args.version)
    if release is None:
        raise PlaneError(f"no release {args.version}", hint="add it with 'mgmtplane release add BUNDLE'")
    if args.max_parallel < 1:
        raise PlaneError("--max-parallel: expected at least 1")
    known = {r.gateway_id for r in Registry(state_dir).all()}
    gateways = _ids(args.gateways, "--gateways") if args.gateways else ()
    canaries = tuple(dict.fromkeys(c for text in args.canary for c in _ids(text, "--canary")))
    for what, ids in (("--gateways", gateways), ("--canary", canaries)):
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise PlaneError(
                f"{what}: no registered gateway {', '.join(unknown)}", hint="see 'mgmtplane gateways'"
            )
    windows = {}
    for text in args.window:
        site, window = parse_window(text)
        if site in windows:
            raise PlaneError(f"--window {text!r}: a second window for site {site!r}")
        windows[site] = window
    rollout = Rollout(
        id=new_rollout_id(),
        version=release.version,
        scope="site" if args.site else "gateways" if gateways else "all",
        site=args.site,
        gateways=gateways,
        canaries=canaries,
        max_parallel=args.max_parallel,
        windows=windows,
        halt_on_failure=not args.no_halt,
        urgent=args.urgent or release.urgent,
        downgrade=release.downgrade,
    )
    store = RolloutStore(state_dir)
    with state_lock(state_dir):
        replaced = store.replace_current(rollout, utc_now_iso())
    if replaced is not None and replaced.get("phase") == "superseded":
        print(f"rollout {replaced.get('id')} was not finished; this one replaces it", file=sys.stderr)
    scope = {"all": "all gateways", "site": f"site {args.site}", "gateways": f"{len(gateways)} gateways"}
    print(
        f"rollout {rollout.id}: {release.version} to {scope[rollout.scope]}"
        + (f", canaries {', '.join(canaries)} first" if canaries else "")
        + f", {rollout.max_parallel} at a time"
        + (", urgent (no windows)" if rollout.urgent else "")
        + ("" if rollout.halt_on_failure else ", not halting on failures")
    )
    for site, window in sorted(windows.items()):
        print(f"  window {site}: {window.text()}")
    print("watch it: mgmtplane rollout status")
    return 0


def _fleet(state_dir: Path) -> list[Facts]:
    statuses = load_statuses(state_dir)
    out = []
    for gid, s in statuses.items():
        try:
            state = UpdateState(str(s["state"])) if s.get("state") else None
        except ValueError:
            state = None
        out.append(
            Facts(
                gid,
                None,
                False,
                s.get("running"),
                state,
                s.get("target"),
                s.get("rollout"),
                s.get("reason"),
                s.get("at") if isinstance(s.get("at"), int | float) else None,
            )
        )
    return out


def _change_current(
    state_dir: Path, change: Callable[[Rollout], Rollout], phase: str, reason: str | None
) -> Rollout:
    store = RolloutStore(state_dir)
    with state_lock(state_dir):
        rollout, raw = store.current()
        if rollout is None:
            raise PlaneError("no rollout", hint="start one with 'mgmtplane rollout start VERSION'")
        if raw.get("phase") == Phase.DONE:
            raise PlaneError(f"rollout {rollout.id} is done")
        changed = change(rollout)
        store.save(changed, phase, reason, utc_now_iso())
    return changed


def cmd_rollout_halt(args: argparse.Namespace) -> int:
    """`mgmtplane rollout halt`: no gateway starts installing from now on."""
    reason = f"halted by the operator{': ' + args.reason if args.reason else ''}"
    rollout = _change_current(Path(args.state_dir), lambda r: _halt(r, reason), Phase.HALTED, reason)
    print(f"rollout {rollout.id} halted; gateways already installing finish. Go on: mgmtplane rollout resume")
    return 0


def _halt(rollout: Rollout, reason: str) -> Rollout:
    return replace(rollout, halted=reason)


def cmd_rollout_resume(args: argparse.Namespace) -> int:
    """`mgmtplane rollout resume`: go on; gateways that failed so far may try again."""
    state_dir = Path(args.state_dir)
    fleet = _fleet(state_dir)
    rollout = _change_current(state_dir, lambda r: resume(r, fleet), Phase.RUNNING, None)
    print(f"rollout {rollout.id} resumed ({len(rollout.excused)} earlier failures may try again)")
    return 0


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def cmd_rollout_status(args: argparse.Namespace) -> int:
    """`mgmtplane rollout status`: the rollout and every gateway in it (from the running plane)."""
    state_dir = Path(args.state_dir)
    try:
        with api_from_args(args).open("/v1/rollout", timeout=10) as resp:
            view = json.load(resp)
    except PlaneError as exc:
        print(f"(no live state: {exc}; showing the stored state)", file=sys.stderr)
        rollout, raw = RolloutStore(state_dir).current()
        statuses = load_statuses(state_dir)
        view = {
            "rollout": raw if rollout else None,
            "gateways": {g: {"step": "?", "update": s} for g, s in statuses.items()},
        }
    raw = view.get("rollout")
    if not raw:
        print("no rollout")
        return 0
    rollout = rollout_from_json(state_dir / "rollouts.json", raw)
    print(
        f"rollout {rollout.id}: {rollout.version}  phase {raw.get('phase')}"
        + (f": {raw.get('reason')}" if raw.get("reason") else "")
        + f"  (started {raw.get('created_at')}, max {rollout.max_parallel} at a time"
        + (", urgent" if rollout.urgent else "")
        + ")"
    )
    print(f"{'GATEWAY':36}  {'STEP':16}  {'RUNNING':10}  {'SLOT':4}  {'STATE':11}  {'TARGET':10}  REASON")
    for gid, g in sorted(view.get("gateways", {}).items()):
        update = g.get("update") or {}
        state = update.get("state")
        if state == "downloading" and isinstance(update.get("progress"), int | float):
            state = f"dl {update['progress']:.0%}"
        step = g.get("step", "?") + ("*" if g.get("canary") else "")
        reason = g.get("reason") or update.get("reason")
        print(
            f"{gid:36}  {step:16}  {_cell(update.get('running')):10}  {_cell(update.get('slot')):4}  "
            f"{_cell(state):11}  {_cell(update.get('target')):10}  {_cell(reason)}"
        )
    return 0


def add_parsers(sub: Any, with_state_dir: WithStateDir) -> None:
    """Register `release` and `rollout` on the `mgmtplane` parser."""
    release = sub.add_parser("release", help="update bundles the plane offers").add_subparsers(
        dest="release_command", required=True
    )
    p = with_state_dir(release.add_parser("add", help="verify and store a signed bundle"))
    p.add_argument("bundle", metavar="BUNDLE", help="a RAUC bundle made by 'make bundle'")
    p.add_argument("--urgent", action="store_true", help="a security release: rollouts skip the windows")
    p.add_argument("--downgrade", action="store_true", help="older than what runs: gateways may install it")
    p.add_argument(
        "--keyring",
        metavar="PEM",
        help="CA the bundle must verify against "
        "(default: $APPLIANCE_SIGNING_KEYRING, else this machine's development keyring)",
    )
    p.add_argument(
        "--compatible", default=DEFAULT_PRODUCT, help="the product the bundle must be for (%(default)s)"
    )
    p.set_defaults(func=cmd_release_add)
    p = with_state_dir(release.add_parser("list", help="stored releases"))
    p.set_defaults(func=cmd_release_list)
    p = with_state_dir(release.add_parser("remove", help="forget a release and delete its bundle"))
    p.add_argument("version", metavar="VERSION")
    p.set_defaults(func=cmd_release_remove)

    rollout = sub.add_parser("rollout", help="roll a release out to gateways").add_subparsers(
        dest="rollout_command", required=True
    )
    p = with_state_dir(
        rollout.add_parser("start", help="start rolling out a release (replaces the current rollout)")
    )
    p.add_argument("version", metavar="VERSION")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--site", metavar="SITE", help="only the gateways of this site")
    scope.add_argument("--gateways", metavar="ID,ID", help="only these gateways")
    p.add_argument(
        "--canary",
        action="append",
        default=[],
        metavar="ID",
        help="a gateway that goes first; everyone else waits until all canaries are healthy",
    )
    p.add_argument(
        "--max-parallel", type=int, default=1, metavar="N", help="gateways updating at once (%(default)s)"
    )
    p.add_argument(
        "--window",
        action="append",
        default=[],
        metavar="SITE=TZ,DAYS,HH:MM-HH:MM",
        help="maintenance window of a site (SITE * for the rest), e.g. "
        "lab=Europe/Berlin,Mon-Fri,22:00-04:00; none: any time",
    )
    p.add_argument("--no-halt", action="store_true", help="skip failed gateways instead of halting")
    p.add_argument("--urgent", action="store_true", help="ignore the windows (a security release)")
    p.set_defaults(func=cmd_rollout_start)
    p = with_state_dir(rollout.add_parser("status", help="the rollout and each gateway's update state"))
    add_api_flags(p)
    p.set_defaults(func=cmd_rollout_status)
    p = with_state_dir(rollout.add_parser("halt", help="stop starting gateways"))
    p.add_argument("--reason", default="", help="shown in the status")
    p.set_defaults(func=cmd_rollout_halt)
    p = with_state_dir(rollout.add_parser("resume", help="go on after a halt (failed gateways try again)"))
    p.set_defaults(func=cmd_rollout_resume)
