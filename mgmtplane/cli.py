"""Command line of the reference plane: serve, token create/list, admin-token, gateways, forward."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from gwcore.cli import run_command
from gwcore.enrol import encode_token
from gwcore.errors import UserError
from gwcore.memtune import tune_malloc
from mgmtplane.app import PlaneConfig, create_app, load_or_create_admin_token, server_ssl_context
from mgmtplane.ca import server_cert_covers
from mgmtplane.errors import PlaneError
from mgmtplane.front import FrontSite
from mgmtplane.hub import HUB_KEY
from mgmtplane.identity_cli import add_parsers as add_identity_parsers
from mgmtplane.operate import OperateConfig
from mgmtplane.operate_cli import add_api_flags, print_gateways
from mgmtplane.operate_cli import add_parsers as add_operate_parsers
from mgmtplane.registry import Registry, read_json, write_json_atomic
from mgmtplane.rollout_cli import add_parsers as add_rollout_parsers
from mgmtplane.rollover import load_ca_set
from mgmtplane.sites import check_site
from mgmtplane.sites_cli import add_parsers as add_site_parsers
from mgmtplane.tokens import TokenStore, parse_ttl
from mgmtplane.webhook import load_webhook_config

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = os.environ.get("MGMTPLANE_STATE_DIR", "/var/lib/mgmtplane")
# `serve` records the URL it advertises, so `token create` on the same state dir needs no --url.
PLANE_FILE = "plane.json"
_WILDCARDS = {"", "0.0.0.0", "::"}


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) from HOST:PORT or [V6]:PORT; port 0 picks a free port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise PlaneError(f"--listen: {text!r} must be HOST:PORT (IPv6 as [::1]:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise PlaneError(f"--listen: {text!r}: put an IPv6 address in brackets, e.g. [::1]:8443")
    return host, int(port_text)


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _advertise_host(listen_host: str) -> str:
    if listen_host in _WILDCARDS:
        return socket.getfqdn()
    return listen_host


def _check_advertise_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise PlaneError(f"--advertise-url: {url!r} must be https://host[:port] with no path")
    return url.rstrip("/")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host or host == "::" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host or "0.0.0.0", port))
    except OSError as exc:
        sock.close()
        raise PlaneError(f"--listen: cannot bind {host}:{port}: {exc.strerror}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(
    state_dir: Path,
    listen: str,
    advertise_url: str | None,
    sans: Sequence[str] = (),
    operate: OperateConfig | None = None,
) -> None:
    """Run the plane until SIGTERM or SIGINT."""
    host, port = parse_listen(listen)
    advertise = _check_advertise_url(advertise_url) if advertise_url else None
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    if advertise is None:
        advertise = f"https://{_url_host(_advertise_host(host))}:{port}"
    hosts = [_advertise_host(host), urlsplit(advertise).hostname or ""]
    if host in _WILDCARDS:
        hosts.append(socket.gethostname())
    hosts.extend(sans)
    config = PlaneConfig(
        state_dir=state_dir, server_hosts=tuple(h for h in hosts if h), operate=operate or OperateConfig()
    )
    app = create_app(config)
    ssl_ctx = server_ssl_context(config, app)
    write_json_atomic(state_dir / PLANE_FILE, {"url": advertise})
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await FrontSite(runner, sock=sock, ssl_context=ssl_ctx).start()
        # One machine-readable line: tests and scripts wait for it (port 0 is resolved here).
        print(f"mgmtplane: listening on {advertise}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        # GOAWAY and let in-flight relays finish first: once cleanup starts, aiohttp stops
        # reading every connection, tunnels included.
        if (hub := app.get(HUB_KEY)) is not None:
            await hub.drain()
    finally:
        await runner.cleanup()


def _plane_url(state_dir: Path, url: str | None) -> str:
    if url:
        return _check_advertise_url(url)
    data = read_json(state_dir / PLANE_FILE, {})
    saved = data.get("url") if isinstance(data, dict) else None
    if not isinstance(saved, str):
        raise PlaneError(
            f"{state_dir}: no plane URL recorded",
            hint="pass --url or run 'mgmtplane serve' with this state dir",
        )
    return saved


def cmd_serve(args: argparse.Namespace) -> int:
    """`mgmtplane serve`."""
    webhook = load_webhook_config(
        args.webhook_url,
        Path(args.webhook_secret_file) if args.webhook_secret_file else None,
        Path(args.webhook_ca_file) if args.webhook_ca_file else None,
    )
    if not 1 <= args.appliance_down_after <= 86400:
        raise PlaneError("--appliance-down-after: expected seconds between 1 and 86400")
    operate = OperateConfig(webhook=webhook, down_after=args.appliance_down_after)
    tune_malloc()  # relayed bodies pass through in 256 KiB pieces: keep them on the heap
    asyncio.run(serve(Path(args.state_dir), args.listen, args.advertise_url, args.san, operate))
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    """`mgmtplane token create`: print a new join token."""
    state_dir = Path(args.state_dir)
    ttl = parse_ttl(args.ttl)
    if args.site is not None:
        check_site(args.site, "--site")  # before anything else, so a typo costs nothing
    ca = load_ca_set(
        state_dir, create=False
    ).server  # the CA the server certificate chains to: what tokens pin
    if args.gateway and Registry(state_dir).get(args.gateway) is None:
        raise PlaneError(f"--gateway: no registered gateway {args.gateway}", hint="see 'mgmtplane gateways'")
    url = _plane_url(state_dir, args.url)
    host = urlsplit(url).hostname or ""
    if server_cert_covers(state_dir, host) is False:
        # The gateway would then fail pinned TLS with a hostname mismatch; say so now.
        print(
            f"warning: the plane's server certificate does not name {host};"
            f" restart 'mgmtplane serve' with --san {host} (or --advertise-url)",
            file=sys.stderr,
        )
    site = check_site(args.site, "--site") if args.site is not None else None
    secret, expires_at = TokenStore(state_dir).create(ttl, for_gateway=args.gateway, site=site)
    print(encode_token(url, ca.spki_hash, secret, expires_at))
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    """`mgmtplane token list`: stored tokens (hashes only) and their state."""
    now = time.time()
    for record in TokenStore(Path(args.state_dir)).all():
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.expires_at))
        who = record.gateway_id or (f"for {record.for_gateway}" if record.for_gateway else "")
        who += f"  site {record.site}" if record.site else ""
        print(f"{record.token_id[:12]}  {record.status(now):8}  expires {expires}  {who}")
    return 0


def cmd_admin_token(args: argparse.Namespace) -> int:
    """`mgmtplane admin-token`: print the admin API bearer token."""
    print(load_or_create_admin_token(Path(args.state_dir)))
    return 0


def cmd_gateways(args: argparse.Namespace) -> int:
    """`mgmtplane gateways`: registered gateways, with the tunnel and health when the plane runs."""
    return print_gateways(args)


def cmd_forward(args: argparse.Namespace) -> int:
    """`mgmtplane forward GATEWAY TARGET --listen 127.0.0.1:PORT`: a local listener relaying to one target."""
    from mgmtplane.forward import build_config, run_forward  # the other commands do not need it

    config = build_config(
        Path(args.state_dir),
        args.gateway,
        args.target,
        parse_listen(args.listen),
        url=_check_advertise_url(args.url) if args.url else None,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        token_file=Path(args.token_file) if args.token_file else None,
    )
    asyncio.run(run_forward(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `mgmtplane` argument parser."""
    parser = argparse.ArgumentParser(prog="mgmtplane", description="Reference management plane for gateways")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_state_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--state-dir",
            default=DEFAULT_STATE_DIR,
            help="CA, tokens and registry (%(default)s; env MGMTPLANE_STATE_DIR)",
        )
        return p

    p = with_state_dir(sub.add_parser("serve", help="run the plane (creates its CA on first start)"))
    p.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT to listen on (%(default)s)")
    p.add_argument("--advertise-url", help="URL gateways use (default https://LISTEN_HOST:PORT)")
    p.add_argument(
        "--san", action="append", default=[], metavar="NAME", help="extra DNS name or IP for the server cert"
    )
    p.add_argument("--webhook-url", metavar="URL", help="POST events here (docs/operate.md)")
    p.add_argument("--webhook-secret-file", metavar="FILE", help="the secret that signs events (HMAC-SHA256)")
    p.add_argument(
        "--webhook-ca-file", metavar="FILE", help="CA bundle for an https webhook (default: system)"
    )
    p.add_argument(
        "--appliance-down-after",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="silence before appliance-down, at least 3 health intervals (%(default)s)",
    )
    p.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="join tokens").add_subparsers(dest="token_command", required=True)
    p = with_state_dir(token.add_parser("create", help="print a new single-use join token"))
    p.add_argument("--ttl", default="1h", help="lifetime, e.g. 30s, 15m, 1h, 2d (%(default)s)")
    p.add_argument("--url", help="plane URL in the token (default: the URL 'serve' advertises)")
    p.add_argument("--gateway", metavar="ID", help="enrol this existing gateway again (it keeps its id)")
    p.add_argument("--site", metavar="NAME", help="the site the gateway enrols into (docs/sites.md)")
    p.set_defaults(func=cmd_token_create)
    p = with_state_dir(token.add_parser("list", help="list tokens and their state"))
    p.set_defaults(func=cmd_token_list)

    p = with_state_dir(sub.add_parser("admin-token", help="print the admin API bearer token"))
    p.set_defaults(func=cmd_admin_token)
    p = with_state_dir(sub.add_parser("gateways", help="list registered gateways, their tunnel and health"))
    add_api_flags(p)
    p.set_defaults(func=cmd_gateways)
    add_operate_parsers(sub, with_state_dir)

    p = with_state_dir(
        sub.add_parser("forward", help="serve one target of a gateway on a local plain-HTTP port (for SDKs)")
    )
    p.add_argument(
        "gateway",
        metavar="GATEWAY",
        help="gateway id (or its registered hostname), or site:NAME for a site's target",
    )
    p.add_argument("target", metavar="TARGET", help="target name in the gateway's targets.yaml")
    p.add_argument("--listen", default="127.0.0.1:0", help="loopback HOST:PORT to serve on (%(default)s)")
    p.add_argument("--url", help="plane URL (default: the URL recorded in the state dir)")
    p.add_argument("--ca-file", help="plane CA certificate (default: STATE_DIR/ca.pem)")
    p.add_argument("--token-file", help="file holding the admin token (default: STATE_DIR/admin-token)")
    p.set_defaults(func=cmd_forward)
    add_identity_parsers(sub, with_state_dir)
    add_site_parsers(sub, with_state_dir)
    add_rollout_parsers(sub, with_state_dir)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; PlaneError becomes `error: ...` and exit code 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_command(args.func, args, UserError, args.debug)
