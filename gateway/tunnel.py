"""The tunnel client: dial the plane (mTLS, pinned CA, optional CONNECT proxy), serve streams, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import aiohttp
from yarl import URL

from gateway import protocol as p
from gateway.backoff import Backoff
from gateway.errors import GatewayError
from gateway.proxy import proxy_settings
from gateway.streams import WS_MAX_MESSAGE, Mux, OpenHandler, end_connection, until_either

log = logging.getLogger(__name__)

TUNNEL_PATH = "/v1/tunnel"
# TLS alerts by which a server says "I do not accept your certificate": retrying cannot help.
_AUTH_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_EXPIRED",
    "ACCESS_DENIED",
)


# asyncio servers (the reference plane included) drop a refused TLS 1.3 client without sending the
# alert, so the refusal looks like a disconnect right after the handshake; this many in a row is one.
SILENT_REFUSALS = 3


class State(StrEnum):
    """Where the client is in its connection lifecycle."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DRAINING = "draining"
    BACKOFF = "backoff"
    AUTH_FAILED = "auth-failed"
    STOPPED = "stopped"


class AuthRejected(GatewayError):
    """The plane (or the proxy) refused our credentials, or the plane's certificate is not the pinned CA."""


def client_ssl_context(state_dir: Path) -> ssl.SSLContext:
    """TLS for the tunnel: trust only the pinned plane CA, present our key and certificate."""
    files = {name: state_dir / name for name in ("ca.pem", "cert.pem", "key.pem")}
    for path in files.values():
        if not path.is_file():
            raise GatewayError(f"{path}: file not found", "register the gateway first (firstboot register)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca.pem"]))
        ctx.load_cert_chain(str(files["cert.pem"]), str(files["key.pem"]))
    except (ssl.SSLError, OSError) as exc:
        raise GatewayError(f"{state_dir}: cannot load the TLS identity: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def classify_failure(exc: BaseException) -> str | None:
    """Why a failed attempt is an authentication rejection (None when it is worth retrying)."""
    if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status in (401, 403):
        return f"the plane refused the tunnel with HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientHttpProxyError) and exc.status in (401, 407):
        # 407 is the standard answer; tinyproxy's BasicAuth answers CONNECT with 401.
        return f"the proxy refused our credentials (HTTP {exc.status})"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the plane's certificate does not verify against the pinned CA: {exc.certificate_error}"
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return f"the plane's certificate does not verify against the pinned CA: {cur.verify_message}"
        if isinstance(cur, ssl.SSLError):
            reason = getattr(cur, "reason", None) or ""
            text = f"{reason} {cur}".upper()
            if any(alert in text for alert in _AUTH_ALERTS):
                return f"the plane rejected our client certificate in the TLS handshake ({reason or cur})"
        cur = cur.__cause__ or cur.__context__
    return None


class TunnelClient:
    """Keeps one tunnel to the plane open: explicit states, heartbeat, backoff, GOAWAY drain."""

    def __init__(
        self,
        plane_url: URL,
        ssl_context: ssl.SSLContext,
        on_open: OpenHandler,
        *,
        limits: p.Limits | None = None,
        backoff: Backoff | None = None,
        proxy_url: URL | None = None,
        drain_timeout: float = 20.0,
        connect_timeout: float = 15.0,
        on_state: Callable[[State, str], object] | None = None,
    ) -> None:
        self.url = plane_url.with_path(TUNNEL_PATH)
        self.ssl = ssl_context
        self.on_open = on_open
        self.limits = limits or p.Limits()
        self.backoff = backoff or Backoff()
        self.proxy, self.proxy_auth = proxy_settings(proxy_url)
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self._on_state = on_state
        self.state = State.IDLE
        self.last_error: str | None = None
        self.connects = 0
        self.connected_at: float | None = None
        self.mux: Mux | None = None
        self.first_attempt = asyncio.Event()
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._silent_refusals = 0

    def _set_state(self, state: State, reason: str = "") -> None:
        if state is not self.state:
            log.info("tunnel: %s -> %s%s", self.state, state, f" ({reason})" if reason else "")
            self.state = state
            if self._on_state is not None:
                self._on_state(state, reason)

    async def run(self) -> None:
        """Connect and reconnect until stop(); raises AuthRejected when retrying cannot help."""
        connector = aiohttp.TCPConnector(force_close=True, limit=1)
        session = aiohttp.ClientSession(connector=connector)
        try:
            while not self._stop.is_set():
                self._set_state(State.CONNECTING, str(self.url))
                try:
                    await self._connect_and_serve(session)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure of one attempt is recorded, then retried
                    self.first_attempt.set()
                    why = classify_failure(exc) or self._silent_refusal(exc)
                    if why is not None:
                        self.last_error = why
                        self._set_state(State.AUTH_FAILED, why)
                        log.error("tunnel: giving up: %s", why)
                        raise AuthRejected(why) from exc
                    self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    log.warning("tunnel: connection to %s failed: %s", self.url, self.last_error)
                if self._stop.is_set():
                    break
                delay = self.backoff.next_delay()
                self._set_state(State.BACKOFF, f"retry in {delay:.2f}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            await session.close()
            self._set_state(State.STOPPED)

    def _silent_refusal(self, exc: BaseException) -> str | None:
        if not isinstance(exc, aiohttp.ServerDisconnectedError):
            self._silent_refusals = 0
            return None
        self._silent_refusals += 1
        if self._silent_refusals < SILENT_REFUSALS:
            return None
        return (
            f"the plane closed the connection right after the TLS handshake {self._silent_refusals} times "
            "in a row: it most likely refuses our client certificate"
        )

    async def _connect_and_serve(self, session: aiohttp.ClientSession) -> None:
        async with asyncio.timeout(self.connect_timeout):
            ws = await session.ws_connect(
                self.url,
                ssl=self.ssl,
                proxy=self.proxy,
                proxy_auth=self.proxy_auth,
                max_msg_size=WS_MAX_MESSAGE,
                autoping=True,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            )
        self._ws = ws
        self._silent_refusals = 0
        closed = asyncio.Event()
        mux = Mux(
            ws.send_bytes,
            self.limits,
            opens_streams=False,
            on_open=self.on_open,
            on_goaway=lambda code, msg: self._on_goaway(mux, code, msg),
            on_close=lambda code, msg: closed.set(),
            name="tunnel",
        )
        self.mux = mux
        mux.start()
        receiver = asyncio.create_task(self._receive(ws, mux), name="tunnel-receive")
        drainer: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                await mux.ready.wait()
            if mux.closed:
                raise ConnectionError(f"tunnel closed during HELLO: {mux.close_reason}")
            self.connects += 1
            self.connected_at = time.time()
            self.backoff.reset()
            self.last_error = None
            self._set_state(State.CONNECTED, f"connection {self.connects}")
            self.connected.set()
            self.first_attempt.set()
            await until_either(receiver, closed)
            drainer = self._drainer
            reason = mux.close_reason
            if reason is not None and reason[0] is not p.ErrorCode.CANCELLED:
                self.last_error = f"{reason[0]}: {reason[1]}"
            elif ws.closed:
                self.last_error = f"plane closed the WebSocket (code {ws.close_code})"
            log.info("tunnel: disconnected: %s", self.last_error or "stopped")
        finally:
            self.connected.clear()
            self.connected_at = None
            reason = mux.close_reason
            mux.close(p.ErrorCode.GOING_AWAY, "tunnel connection lost")
            if drainer is not None:
                drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await drainer
            self._drainer = None
            await end_connection(mux, ws.close, receiver, reason)
            self._ws = None
            self.mux = None

    _drainer: asyncio.Task[None] | None = None

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, mux: Mux) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                mux.feed(msg.data)
                if mux.closed:
                    return
            elif msg.type is aiohttp.WSMsgType.ERROR:
                raise ConnectionError(f"WebSocket error: {ws.exception()}")
            else:
                mux.close(p.ErrorCode.PROTOCOL_ERROR, f"unexpected {msg.type.name} message")
                return

    def _on_goaway(self, mux: Mux, code: p.ErrorCode, message: str) -> None:
        self._set_state(State.DRAINING, f"plane sent GOAWAY: {code} {message}".strip())
        self._drainer = asyncio.create_task(self._drain_then_close(mux), name="tunnel-drain")

    async def _drain_then_close(self, mux: Mux) -> None:
        drained = await mux.drain(self.drain_timeout)
        if not drained:
            log.warning(
                "tunnel: %d streams still open after %.0fs of draining", len(mux.streams), self.drain_timeout
            )
        mux.close(p.ErrorCode.GOING_AWAY, "drained after GOAWAY")

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop: GOAWAY to the plane, let in-flight streams finish (bounded), then close."""
        self._stop.set()
        mux = self.mux
        if mux is not None and not mux.closed:
            self._set_state(State.DRAINING, "shutting down")
            mux.goaway(p.ErrorCode.NO_ERROR, "gateway shutting down")
            await mux.drain(self.drain_timeout if drain_timeout is None else drain_timeout)
            mux.close(p.ErrorCode.CANCELLED, "gateway shutting down")

    def status(self) -> dict[str, object]:
        """A snapshot for logs and health checks."""
        mux = self.mux
        return {
            "state": str(self.state),
            "connects": self.connects,
            "last_error": self.last_error,
            "streams": len(mux.streams) if mux is not None else 0,
        }
