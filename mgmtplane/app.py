"""The plane's aiohttp application: CA download, registration, admin API, and the tunnel hub's routes."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hmac
import logging
import secrets
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from cryptography import x509

from gwcore.atomic import write_atomic
from gwcore.enrol import valid_reported_hostname
from gwcore.pki import spki_sha256
from gwcore.safeload import loads_json
from mgmtplane import tls_alerts
from mgmtplane.ca import CSRError, cert_fingerprint, load_csr
from mgmtplane.errors import PlaneError
from mgmtplane.front import RELAY_AUTH_KEY, Refusal, RelayAuth
from mgmtplane.health import STORE_KEY
from mgmtplane.hub import HUB_KEY, setup_hub
from mgmtplane.identity import IDENTITY_KEY, PlaneIdentity, build_server_context, setup_identity
from mgmtplane.operate import OperateConfig, health_summary, setup_operate
from mgmtplane.registry import GatewayRecord, Registry, state_lock
from mgmtplane.releases import bundle_route
from mgmtplane.rollout import ROLLOUT_KEY, RolloutService, setup_rollout
from mgmtplane.rollover import load_ca_set
from mgmtplane.settings import load_settings
from mgmtplane.site_routes import setup_sites
from mgmtplane.tokens import TokenError, TokenStore

log = logging.getLogger(__name__)
_T = TypeVar("_T")

ADMIN_TOKEN_FILE = "admin-token"
ADMIN_PREFIX = "/v1/gateways"
ADMIN_PREFIXES = (ADMIN_PREFIX, "/v1/sites", "/v1/rollout")  # every route under these needs the admin token
MAX_REGISTER_BODY = 64 * 1024


@dataclass(frozen=True)
class PlaneConfig:
    """What the plane needs to run: its state dir and the names its server certificate must cover."""

    state_dir: Path
    server_hosts: tuple[str, ...] = ()
    operate: OperateConfig = field(default_factory=OperateConfig)  # events and where they go (operate.md)


CONFIG_KEY = web.AppKey("plane_config", PlaneConfig)
TOKENS_KEY = web.AppKey("plane_tokens", TokenStore)
REGISTRY_KEY = web.AppKey("plane_registry", Registry)
ADMIN_TOKEN_KEY = web.AppKey("plane_admin_token", str)
STATE_IO_KEY = web.AppKey("plane_state_io", ThreadPoolExecutor)


async def _state_io_ctx(app: web.Application) -> AsyncIterator[None]:
    """One worker thread for state-file I/O (file lock, fsync), kept off the event loop."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plane-state")
    app[STATE_IO_KEY] = executor
    yield
    executor.shutdown(wait=True)


async def _state_io(app: web.Application, fn: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(app[STATE_IO_KEY], fn, *args)


def load_or_create_admin_token(state_dir: Path) -> str:
    """The admin API bearer token, created (0600) in the state dir on first use."""
    path = state_dir / ADMIN_TOKEN_FILE
    with state_lock(state_dir):
        try:
            token = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            token = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise PlaneError(f"{path}: cannot read the admin token: {exc}") from exc
        if not token:
            token = secrets.token_urlsafe(32)
            write_atomic(path, (token + "\n").encode(), mode=0o600)
            log.info("created admin token in %s", path)
    return token


def server_ssl_context(config: PlaneConfig, app: web.Application | None = None) -> ssl.SSLContext:
    """TLS server context: the plane's cert, and client certs requested (optional) against its CAs.

    With the app, the context follows the app's CA set (a CA rollover needs no restart:
    mgmtplane.identity). Also makes this process's asyncio send the TLS alert when it refuses a
    client certificate (tls_alerts): the gateway stops only on an explicit refusal, never on a
    silent close.
    """
    tls_alerts.install()
    if app is not None:
        return app[IDENTITY_KEY].server_context()
    return build_server_context(config.state_dir, config.server_hosts, load_ca_set(config.state_dir))


def json_error(status: int, code: str, message: str) -> web.Response:
    """A JSON error body `{"error": code, "message": text}` with `status`."""
    return web.json_response({"error": code, "message": message}, status=status)


def _admin_authorized(request: web.Request) -> bool:
    return _bearer_ok(request.headers.get("Authorization", ""), request.app[ADMIN_TOKEN_KEY])


def _bearer_ok(header: str, token: str) -> bool:
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


_UNAUTHORIZED = "admin API needs 'Authorization: Bearer <admin token>'"
_CHALLENGE = ("WWW-Authenticate", 'Bearer realm="mgmtplane"')


def relay_auth(token: str) -> RelayAuth:
    """admin_auth for the relay route on the lean public path (mgmtplane.front): the same rule and answer."""

    def check(header: str) -> Refusal | None:
        return None if _bearer_ok(header, token) else (401, "unauthorized", _UNAUTHORIZED, (_CHALLENGE,))

    return check


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route under ADMIN_PREFIXES (relay routes included) needs the admin token."""
    path = request.path
    admin = any(path == prefix or path.startswith(prefix + "/") for prefix in ADMIN_PREFIXES)
    if admin and not _admin_authorized(request):
        resp = json_error(401, "unauthorized", _UNAUTHORIZED)
        resp.headers[_CHALLENGE[0]] = _CHALLENGE[1]
        return resp
    return await handler(request)


async def get_ca(request: web.Request) -> web.Response:
    """GET /v1/ca: the trusted CA certificates (PEM, the one tokens pin first); clients keep the one
    whose SPKI hash their token carries."""
    return web.Response(body=request.app[IDENTITY_KEY].cas.bundle_pem, content_type="application/x-pem-file")


async def get_health(request: web.Request) -> web.Response:
    """GET /v1/health: liveness plus a few counts."""
    live = _live_gateways(request.app)
    return web.json_response(
        {
            "status": "ok",
            "ca_hash": request.app[IDENTITY_KEY].cas.server.spki_hash,
            "connected": sum(1 for s in live.values() if s.get("connected")),
        }
    )


def _bad_request(message: str) -> web.Response:
    return json_error(400, "bad-request", message)


async def post_register(request: web.Request) -> web.Response:
    """POST /v1/register: redeem a join token and sign the gateway's CSR."""
    if request.content_length is not None and request.content_length > MAX_REGISTER_BODY:
        return json_error(413, "too-large", f"request body over {MAX_REGISTER_BODY} bytes")
    try:
        body = await request.content.read(MAX_REGISTER_BODY + 1)
        if len(body) > MAX_REGISTER_BODY:
            return json_error(413, "too-large", f"request body over {MAX_REGISTER_BODY} bytes")
        data = loads_json(body)
    except ValueError:
        return _bad_request("body is not JSON")
    if not isinstance(data, dict):
        return _bad_request("body must be a JSON object")
    secret, csr_pem, hostname = data.get("token_secret"), data.get("csr"), data.get("hostname", "")
    if not isinstance(secret, str) or not secret:
        return _bad_request("token_secret: missing")
    if not isinstance(csr_pem, str) or not csr_pem:
        return _bad_request("csr: missing")
    if not isinstance(hostname, str) or (hostname and not valid_reported_hostname(hostname)):
        return _bad_request("hostname: not a valid host name")
    try:
        csr = load_csr(csr_pem)
    except CSRError as exc:
        return json_error(400, "bad-csr", str(exc))
    key_hash = spki_sha256(csr)
    app = request.app
    tokens, registry = app[TOKENS_KEY], app[REGISTRY_KEY]
    stored = await _state_io(app, tokens.peek, secret)
    # A token for an existing gateway (docs/operate.md) works only while the plane knows it.
    for_gateway = stored.for_gateway if stored is not None and stored.used_at is None else None
    if for_gateway and await _state_io(app, registry.get, for_gateway) is None:
        message = f"gateway {for_gateway} is no longer registered with this plane"
        return json_error(403, "gateway-unknown", message)
    try:
        redemption = await _state_io(app, tokens.redeem, secret, key_hash, str(uuid.uuid4()))
    except TokenError as exc:
        log.warning("registration refused from %s: %s", request.remote, exc.code)
        return json_error(exc.status, exc.code, str(exc))
    cas = app[IDENTITY_KEY].cas
    settings = await _state_io(app, load_settings, app[CONFIG_KEY].state_dir)
    # Signed by the CA the tokens pin (the server's): the client checks exactly that.
    cert_pem = cas.server.sign_csr(
        csr_pem, redemption.gateway_id, dt.timedelta(seconds=settings.cert_lifetime)
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    registered_at = _utc_now_iso()
    previous = await _state_io(app, registry.get, redemption.gateway_id)
    if previous is not None:
        # A resumed registration, or an existing gateway enrolled again, keeps its registration time.
        registered_at = previous.registered_at
    record = GatewayRecord(
        gateway_id=redemption.gateway_id,
        hostname=hostname or "",
        registered_at=registered_at,
        cert_serial=format(cert.serial_number, "x"),
        cert_fingerprint=cert_fingerprint(cert),
        token_id=redemption.token_id[:12],
        key_hash=key_hash,
        issuer=cas.server.spki_hash,
        cert_not_after=cert.not_valid_after_utc.replace(microsecond=0).isoformat(),
        # A token without a site keeps the site a re-enrolled gateway had (docs/sites.md).
        site=redemption.site or (previous.site if previous is not None else ""),
    )
    await _state_io(app, registry.add, record)
    if redemption.replay:
        log.info("re-issued certificate for %s (same key redeemed its token again)", redemption.gateway_id)
    elif previous is not None:
        log.info("gateway %s enrolled again with a token made for it", redemption.gateway_id)
    return web.json_response(
        {
            "gateway_id": redemption.gateway_id,
            "certificate": cert_pem.decode(),
            "ca": cas.server.cert_pem.decode(),
        }
    )


def _utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def _live_gateways(app: web.Application) -> dict[str, dict[str, Any]]:
    """The hub's per-gateway tunnel state by gateway id."""
    return {str(s["id"]): dict(s) for s in app[HUB_KEY].sessions()}


def _gateway_json(record: GatewayRecord, live: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    tunnel = live.get(record.gateway_id)
    return {**record.to_json(), "connected": bool(tunnel and tunnel.get("connected")), "tunnel": tunnel}


def _update_json(app: web.Application, gateway_id: str) -> dict[str, Any] | None:
    """Running version, slot, update state, target and reason (docs/protocol.md §13.5)."""
    service = app.get(ROLLOUT_KEY)
    return service.gateway_update(gateway_id) if service is not None else None


def _health_versions(app: web.Application) -> dict[str, str]:
    """The image version each gateway's latest health record names (for gateways without an agent)."""
    store = app.get(STORE_KEY)
    out = {}
    for gid, (record, _received) in store.latest.items() if store is not None else ():
        version = (record.get("appliance") or {}).get("image_version")
        if isinstance(version, str):
            out[gid] = version
    return out


async def list_gateways(request: web.Request) -> web.Response:
    """GET /v1/gateways: registered gateways merged with the hub's live tunnel state."""
    records = await _state_io(request.app, request.app[REGISTRY_KEY].all)
    live = _live_gateways(request.app)
    gateways = [
        {
            **_gateway_json(r, live),
            "health": health_summary(request.app, r.gateway_id),
            "update": _update_json(request.app, r.gateway_id),
        }
        for r in records
    ]
    return web.json_response({"gateways": gateways})


async def get_gateway(request: web.Request) -> web.Response:
    """GET /v1/gateways/{gateway_id}: one gateway, or 404."""
    gateway_id = request.match_info["gateway_id"]
    record = await _state_io(request.app, request.app[REGISTRY_KEY].get, gateway_id)
    if record is None:
        return json_error(404, "gateway-unknown", f"no registered gateway {gateway_id}")
    body = {
        **_gateway_json(record, _live_gateways(request.app)),
        "health": health_summary(request.app, gateway_id),
        "update": _update_json(request.app, gateway_id),
    }
    return web.json_response(body)


async def admit_gateway(request: web.Request, gateway_id: str) -> tuple[str, str] | None:
    """The hub's admission check: every tunnel against the registry (mgmtplane.identity.admission):
    an unknown, revoked or deleted gateway, or a certificate that is not its current one (nor the
    one it renews from), gets a 403, not a tunnel."""
    return await request.app[IDENTITY_KEY].admit(request, gateway_id)


def create_app(config: PlaneConfig) -> web.Application:
    """The plane application; the CA and admin token are created in the state dir if missing."""
    app = web.Application(middlewares=[admin_auth])
    app[CONFIG_KEY] = config
    app[TOKENS_KEY] = TokenStore(config.state_dir)
    app[REGISTRY_KEY] = Registry(config.state_dir)
    app[ADMIN_TOKEN_KEY] = load_or_create_admin_token(config.state_dir)
    app.cleanup_ctx.append(_state_io_ctx)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/v1/ca", get_ca)
    app.router.add_post("/v1/register", post_register)
    app.router.add_get("/v1/gateways", list_gateways)
    app.router.add_get("/v1/gateways/{gateway_id}", get_gateway)
    app[RELAY_AUTH_KEY] = relay_auth(app[ADMIN_TOKEN_KEY])
    setup_hub(app)
    identity = PlaneIdentity(
        config.state_dir, config.server_hosts, app[REGISTRY_KEY], functools.partial(_state_io, app)
    )
    setup_identity(app, identity)
    setup_operate(app, config.state_dir, app[REGISTRY_KEY], config.operate)
    setup_sites(app, config.state_dir, app[REGISTRY_KEY])
    # Releases and rollouts (docs/updates.md): after identity, so a new tunnel hears ca-update first.
    store = app.get(STORE_KEY)
    rollouts = RolloutService(
        config.state_dir,
        app[HUB_KEY],
        functools.partial(_state_io, app),
        versions=functools.partial(_health_versions, app),
        notice=store.notice if store is not None else None,
    )
    setup_rollout(app, rollouts)
    app.router.add_get(
        "/v1/releases/{version}/bundle", bundle_route(config.state_dir, _admin_authorized, admit_gateway)
    )
    return app
