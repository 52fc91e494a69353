"""`mgmtplane forward`: a local plain-HTTP listener that relays every request to one target through the plane.

Like `kubectl port-forward`: SDKs that only know a base URL (pyVmomi, govc, openstacksdk, sushy,
curl) talk to http://127.0.0.1:PORT/ as if it were the target, and each request goes to
`/v1/gateways/{id}/targets/{name}/{path}` on the plane with the admin token, over TLS that trusts
only the plane CA. Bodies stream both ways. The caller's own credentials become the plane's
X-Target-* headers (the plane keeps `Authorization` and `Cookie` for itself); the admin token is
only ever sent to the plane, which strips it before the tunnel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from gwcore.httpwire import strip_hop_headers
from mgmtplane.errors import PlaneError
from mgmtplane.registry import Registry, read_json
from mgmtplane.sites import check_site

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# The caller's credentials for the target: the plane maps X-Target-* back to these names.
_CREDENTIALS = {"authorization": "X-Target-Authorization", "cookie": "X-Target-Cookie"}
# Never sent on: the plane's own auth is ours to set, and a forwarded-for chain means nothing here.
# Expect is answered here; the plane answers its own.
_DROP = frozenset({"x-target-authorization", "x-target-cookie", "x-forwarded-for", "x-real-ip", "expect"})
_GATEWAY_FILTER = "x-gateway-filter"
# The plane's and gateway's refusals carry this header, so a client that shows only the status line
# or the headers still sees why.
REFUSAL_HEADER = "X-Relay-Refusal"


@dataclass(frozen=True)
class ForwardConfig:
    """Where to relay: the plane, its CA and admin token, the gateway and target, the local listener."""

    plane_url: str
    ca_file: Path
    admin_token: str
    gateway_id: str
    target: str
    listen_host: str
    listen_port: int
    site: str = ""  # `site:NAME` for GATEWAY: the site's target, any of its gateways (docs/sites.md)


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise PlaneError(f"{path}: no admin token", hint="pass --token-file") from None
    except OSError as exc:
        raise PlaneError(f"{path}: cannot read: {exc.strerror}") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise PlaneError(f"{path}: not a bearer token")
    return token


def resolve_gateway(state_dir: Path, name: str) -> str:
    """A gateway id from an id or a registered hostname (hostnames must be unique)."""
    records = Registry(state_dir).all()  # none when the plane's state is elsewhere (flags given)
    if any(r.gateway_id == name for r in records):
        return name
    matches = [r.gateway_id for r in records if r.hostname == name]
    if len(matches) > 1:
        raise PlaneError(f"gateway: hostname {name!r} names {len(matches)} gateways; use the gateway id")
    if matches:
        return matches[0]
    if not records:
        return name  # no registry here (the plane is elsewhere): the plane judges the id
    raise PlaneError(f"gateway: {name!r} is neither a registered gateway id nor a hostname in {state_dir}")


def plane_endpoint(
    state_dir: Path, url: str | None, ca_file: Path | None, token_file: Path | None
) -> tuple[str, Path, str]:
    """The plane's URL (no trailing /), CA file and admin token: from the flags, else from the
    state dir (`plane.json`, `ca.pem`, `admin-token`), for every command that calls the plane."""
    if not url:
        saved = read_json(state_dir / "plane.json", {})
        url = saved.get("url") if isinstance(saved, dict) else None
        if not isinstance(url, str):
            raise PlaneError(f"{state_dir}: no plane URL recorded", hint="pass --url")
    if not url.startswith("https://"):
        raise PlaneError(f"--url: {url!r} must be an https:// URL")
    ca = ca_file or state_dir / "ca.pem"
    if not ca.is_file():
        raise PlaneError(f"{ca}: plane CA certificate not found", hint="pass --ca-file")
    return url.rstrip("/"), ca, _read_token(token_file or state_dir / "admin-token")


def build_config(
    state_dir: Path,
    gateway: str,
    target: str,
    listen: tuple[str, int],
    url: str | None = None,
    ca_file: Path | None = None,
    token_file: Path | None = None,
) -> ForwardConfig:
    """Fill in the plane URL, CA and admin token from the state dir where flags do not give them."""
    host, port = listen
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        # Whoever reaches the listener acts with the admin token: it must stay on this machine.
        raise PlaneError(f"--listen: {host!r} is not a loopback address; the forward serves this host only")
    url, ca, token = plane_endpoint(state_dir, url, ca_file, token_file)
    if not target or "/" in target or not target.isprintable():
        raise PlaneError(f"target: {target!r} is not a target name")
    if gateway.startswith("site:"):
        site = check_site(gateway.removeprefix("site:"), "GATEWAY (site:NAME)")
        return ForwardConfig(url, ca, token, "", target, host, port, site=site)
    return ForwardConfig(url, ca, token, resolve_gateway(state_dir, gateway), target, host, port)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in flat)[:limit]


class Forward:
    """The listener's handler: one plane request per caller request, streamed."""

    def __init__(self, config: ForwardConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        via = f"sites/{config.site}" if config.site else f"gateways/{quote(config.gateway_id, safe='')}"
        self.base = f"{config.plane_url}/v1/{via}/targets/{quote(config.target, safe='')}"

    def _headers(self, request: web.Request) -> list[tuple[str, str]]:
        out = [("Authorization", f"Bearer {self.config.admin_token}")]
        for key, value in strip_hop_headers(request.headers.items()):
            lower = key.lower()
            if lower in _CREDENTIALS:
                out.append((_CREDENTIALS[lower], value))
            elif lower not in _DROP:
                out.append((key, value))
        return out

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Relay one request and stream the answer back; plane refusals keep their status and reason."""
        if not _local_host(request.host):
            # A web page the operator visits could reach 127.0.0.1 by DNS rebinding; its Host gives it away.
            return _refusal(421, "misdirected", f"Host {request.host[:80]!r} is not this forward's address")
        body: AsyncIterator[bytes] | None = _stream(request) if request.body_exists else None
        try:
            cm = self.session.request(
                request.method,
                URL(self.base + request.raw_path, encoded=True),  # the caller's encoding, as sent
                headers=self._headers(request),
                data=body,
                allow_redirects=False,
            )
            upstream = await cm.__aenter__()
        except aiohttp.ClientError as exc:
            log.warning("%s %s: plane unreachable: %s", request.method, request.raw_path[:200], exc)
            return _refusal(502, "plane-unreachable", _one_line(str(exc) or type(exc).__name__))
        try:
            return await self._respond(request, upstream)
        finally:
            await cm.__aexit__(None, None, None)

    async def _respond(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = strip_hop_headers(upstream.headers.items())
        if _GATEWAY_FILTER not in upstream.headers and upstream.status >= 400:
            # Not the target's answer: the plane or the gateway refused (filtered, offline, unknown target).
            return await _plane_refusal(request, upstream, headers)
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in headers:
            resp.headers.add(key, value)
        if upstream.content_length is not None:
            resp.content_length = upstream.content_length
        try:
            await resp.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await resp.write(chunk)
            await resp.write_eof()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            # The headers are gone: an aborted connection is the only honest signal left.
            log.info("%s %s: response cut off: %s", request.method, request.raw_path[:200], exc)
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            log.debug("caller went away")
        return resp


def _local_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _stream(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def _plane_refusal(
    request: web.Request, upstream: aiohttp.ClientResponse, headers: list[tuple[str, str]]
) -> web.Response:
    raw = await upstream.content.read(64 * 1024)
    code, message = "refused", raw.decode("utf-8", "replace")
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict):
            code, message = str(doc.get("error", code)), str(doc.get("message", ""))
    except ValueError:
        pass
    reason = _one_line(f"{code}: {message}" if message else code)
    log.info("%s %s: %d %s", request.method, request.raw_path[:200], upstream.status, reason)
    resp = web.Response(status=upstream.status, reason=_reason(reason), body=raw)
    for key, value in headers:
        if key.lower() not in ("content-length", "content-encoding"):
            resp.headers.add(key, value)
    resp.headers[REFUSAL_HEADER] = reason
    return resp


def _reason(reason: str) -> str:
    # The status line's reason phrase is what pyVmomi and govc print for a non-SOAP answer.
    return _one_line(f"Relay refused: {reason}", 200)


def _refusal(status: int, code: str, message: str) -> web.Response:
    reason = _one_line(f"{code}: {message}")
    resp = web.Response(
        status=status,
        reason=_reason(reason),
        text=json.dumps({"error": code, "message": message}),
        content_type="application/json",
    )
    resp.headers[REFUSAL_HEADER] = reason
    return resp


def client_ssl_context(ca_file: Path) -> ssl.SSLContext:
    """TLS to the plane: its CA only, host name checked."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    return ctx


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0 picks a free one); a one-line error when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PlaneError(f"--listen: cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def run_forward(config: ForwardConfig) -> None:
    """Serve until SIGINT/SIGTERM; prints one `forwarding http://HOST:PORT ...` line once it listens."""
    sock = bind(config.listen_host, config.listen_port)
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(config.ca_file), limit=64)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # the caller keeps its own cookies
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        trust_env=False,
    )
    forward = Forward(config, session)
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", forward.handle)
    # In-flight calls get a few seconds after SIGTERM, not aiohttp's default minute.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        port = sock.getsockname()[1]
        host = f"[{config.listen_host}]" if ":" in config.listen_host else config.listen_host
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # One machine-readable line, once a signal stops us cleanly: scripts and tests wait for it.
        via = f"site {config.site}" if config.site else f"gateway {config.gateway_id}"
        where = f"{via} target {config.target}"
        print(f"mgmtplane: forwarding http://{host}:{port} -> {where}", flush=True)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
        await session.close()
