"""`mgmtplane support-bundle` and the health columns of `mgmtplane gateways` (docs/mgmtplane.md).

Both talk to the running plane's admin API, found through the state dir (plane.json, ca.pem,
admin-token) unless --url, --ca-file and --token-file say otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gwcore.atomic import atomic_writer
from mgmtplane.errors import PlaneError
from mgmtplane.registry import Registry
from mgmtplane.support import MAX_BUNDLE, newest_stored

CHUNK = 256 * 1024


@dataclass(frozen=True)
class Api:
    """The running plane's admin API, as this CLI reaches it."""

    url: str
    ssl: ssl.SSLContext
    token: str

    def open(self, path: str, timeout: float = 30) -> Any:
        """GET `path`; the response (caller closes); PlaneError with the plane's message on an error."""
        # self.url is checked to be https:// (api_from_args).
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})  # noqa: S310
        try:
            return urllib.request.urlopen(req, context=self.ssl, timeout=timeout)  # noqa: S310
        except urllib.error.HTTPError as err:
            try:
                body = json.loads(err.read())
                message = f"{body.get('error')}: {body.get('message')}"
            except ValueError:
                message = f"HTTP {err.code}"
            raise PlaneError(f"{path}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PlaneError(
                f"{self.url}: cannot reach the plane: {reason}", hint="is `mgmtplane serve` running?"
            ) from None


def api_from_args(args: argparse.Namespace) -> Api:
    """The API endpoint from flags, else from the state dir."""
    from mgmtplane.forward import plane_endpoint  # one rule for every command; loaded only when used

    url, ca, token = plane_endpoint(
        Path(args.state_dir),
        args.url,
        Path(args.ca_file) if args.ca_file else None,
        Path(args.token_file) if args.token_file else None,
    )
    return Api(url, ssl.create_default_context(cafile=str(ca)), token)


def cmd_support_bundle(args: argparse.Namespace) -> int:
    """`mgmtplane support-bundle GATEWAY -o FILE`: a fresh bundle through the tunnel (or, with
    --stored, the newest one the plane stored from an offer)."""
    from mgmtplane.forward import resolve_gateway

    state_dir = Path(args.state_dir)
    gateway_id = resolve_gateway(state_dir, args.gateway)
    out = Path(args.output)
    if args.stored:
        source = newest_stored(state_dir, gateway_id)
        if source is None:
            raise PlaneError(f"gateway {gateway_id}: no stored support bundle in {state_dir}")
        with source.open("rb") as src, atomic_writer(out, 0o600) as dst:
            shutil.copyfileobj(src, dst)
        print(f"{out}: {source.stat().st_size} bytes (stored {source.name})")
        return 0
    api = api_from_args(args)
    start = time.monotonic()
    size = 0
    with api.open(f"/v1/gateways/{gateway_id}/support-bundle", timeout=args.timeout) as resp:
        source = resp.headers.get("X-Bundle-Source", "")
        # A bundle cut short (the tunnel dropped) must not replace FILE: the atomic writer keeps the
        # old file unless the whole body arrived.
        with atomic_writer(out, 0o600) as dst:
            while chunk := resp.read(CHUNK):
                size += len(chunk)
                if size > MAX_BUNDLE:
                    raise PlaneError(f"support bundle over {MAX_BUNDLE} bytes: refused")
                dst.write(chunk)
    took = time.monotonic() - start
    print(f"{out}: {size} bytes in {took:.1f} s (built by the {source or 'gateway'})")
    return 0


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def print_gateways(args: argparse.Namespace) -> int:
    """`mgmtplane gateways`: the registry, with live state and health when the plane runs."""
    state_dir = Path(args.state_dir)
    records = Registry(state_dir).all()
    live: dict[str, dict[str, Any]] = {}
    try:
        with api_from_args(args).open("/v1/gateways", timeout=10) as resp:
            live = {g["gateway_id"]: g for g in json.load(resp).get("gateways", [])}
    except PlaneError as exc:
        print(f"(no live state: {exc})", file=sys.stderr)
    header = f"{'GATEWAY':36}  {'HOSTNAME':20}  {'TUNNEL':6}  {'HEALTH':8}  {'TARGETS':7}  "
    header += f"{'CERT':6}  {'CLOCK':7}  {'/VAR':5}  {'SEEN':6}  {'VERSION':10}  {'UPDATE':22}  CONDITIONS"
    print(header)
    for record in records:
        gw = live.get(record.gateway_id, {})
        health = gw.get("health") or {}
        tunnel = "up" if gw.get("connected") else ("down" if gw else "?")
        targets = f"{health['targets_up']}/{health['targets']}" if "targets" in health else "-"
        cert = _cell(health.get("cert_days"), "{:.0f}d")
        clock = _cell(health.get("clock_offset_s"), "{:+.1f}s")
        var = _cell(health.get("var_percent"), "{:.0f}%")
        seen = _cell(health.get("age_s"), "{:.0f}s")
        conditions = ",".join(health.get("conditions") or []) or "-"
        version, update = _update_cells(gw.get("update"), health.get("version"))
        print(
            f"{record.gateway_id:36}  {(record.hostname or '-')[:20]:20}  {tunnel:6}  "
            f"{health.get('status', '?'):8}  {targets:7}  {cert:6}  {clock:7}  {var:5}  {seen:6}  "
            f"{version:10}  {update:22}  " + conditions
        )
    return 0


def _update_cells(update: Any, health_version: Any) -> tuple[str, str]:
    """VERSION (running, slot) and UPDATE (state -> target) from the gateway's "update" field."""
    if not isinstance(update, dict):
        return _cell(health_version), "-"
    version = f"{update.get('running') or health_version or '-'}/{update.get('slot') or '?'}"
    state = update.get("state") or update.get("rollout_step") or "-"
    target = update.get("target")
    return version, f"{state}{f' -> {target}' if target and target != update.get('running') else ''}"


def add_api_flags(p: argparse.ArgumentParser) -> None:
    """--url, --ca-file, --token-file for commands that call the running plane."""
    p.add_argument("--url", help="plane URL (default: the URL recorded in the state dir)")
    p.add_argument("--ca-file", help="plane CA certificate (default: STATE_DIR/ca.pem)")
    p.add_argument("--token-file", help="file holding the admin token (default: STATE_DIR/admin-token)")


def add_parsers(sub: Any, with_state_dir: Any) -> None:
    """Register `support-bundle`."""
    p = with_state_dir(
        sub.add_parser("support-bundle", help="fetch a redacted support bundle from a gateway")
    )
    p.add_argument("gateway", metavar="GATEWAY", help="gateway id (or its registered hostname)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the tar.gz (0600)")
    p.add_argument("--stored", action="store_true", help="the newest bundle the plane stored from an offer")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the gateway (%(default)s)"
    )
    add_api_flags(p)
    p.set_defaults(func=cmd_support_bundle)
