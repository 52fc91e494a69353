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

from gateway.errors import GatewayError
from gateway.tunnel.backoff import Backoff
from gateway.tunnel.proxy import proxy_settings
from gateway.tunnel.retry_policy import PROXY_AUTH_DELAY, classify
from gwcore import protocol as p
from gwcore.control import ControlChannel
from gwcore.status_file import TunnelReport
from gwcore.streams import WS_MAX_MESSAGE, Mux, OpenHandler, Stream, end_connection, until_either

log = logging.getLogger(__name__)

TUNNEL_PATH = "/v1/tunnel"


class State(StrEnum):
    """Where the client is in its connection lifecycle."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DRAINING = "draining"
    BACKOFF = "backoff"
    REJECTED = "rejected"  # an explicit rejection: the client stopped for good (retry_policy)
    STOPPED = "stopped"


# "since" in the status report moves when the tunnel goes up, goes down or ends, not on every
# state: connecting and backoff alternate all through one outage.
_PHASE = {
    State.IDLE: "down",
    State.CONNECTING: "down",
    State.BACKOFF: "down",
    State.CONNECTED: "up",
    State.DRAINING: "up",
    State.REJECTED: "end",
    State.STOPPED: "end",
}


class Rejected(GatewayError):
    """The plane refused this gateway explicitly, or its certificate failed the pin: retrying cannot help."""


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
        proxy_auth_delay: float = PROXY_AUTH_DELAY,
        on_state: Callable[[State, str], object] | None = None,
        control: ControlChannel | None = None,
    ) -> None:
        self.plane_url = plane_url
        self.url = plane_url.with_path(TUNNEL_PATH)
        self.ssl = ssl_context
        self._relay_open = on_open
        self.limits = limits or p.Limits()
        self.backoff = backoff or Backoff()
        self.proxy, self.proxy_auth = proxy_settings(proxy_url)
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self.proxy_auth_delay = proxy_auth_delay
        self._on_state = on_state
        # Control messages (protocol §13) with the plane; announced in HELLO only when given.
        self.control = control
        self.state = State.IDLE
        self.since = time.time()  # when the tunnel last went up, went down or ended
        self.last_error: str | None = None
        self.action: str | None = None  # what an operator can do about last_error / stop_reason
        self.stop_reason: str | None = None
        self.connects = 0
        self.failures = 0  # failed attempts since the last good connection
        self.relayed = 0  # streams the plane opened
        self.next_attempt_at: float | None = None
        self.connected_at: float | None = None
        self.mux: Mux | None = None
        self.first_attempt = asyncio.Event()
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._silent_closes = 0

    def _set_state(self, state: State, reason: str = "") -> None:
        if state is self.state:
            return
        # Connecting and backoff alternate through an outage: the journal gets the failures
        # (warnings) and the changes that matter, not two lines per attempt.
        quiet = {self.state, state} <= {State.CONNECTING, State.BACKOFF}
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "tunnel: %s -> %s%s",
            self.state,
            state,
            f" ({reason})" if reason else "",
        )
        if _PHASE[state] != _PHASE[self.state]:
            self.since = time.time()
        self.state = state
        if self._on_state is not None:
            self._on_state(state, reason)

    def on_open(self, stream: Stream) -> None:
        """Mux callback: count the stream, then hand it to the relay."""
        self.relayed += 1
        self._relay_open(stream)

    async def run(self) -> None:
        """Connect and reconnect until stop(); raises Rejected on an explicit rejection."""
        connector = aiohttp.TCPConnector(force_close=True, limit=1)
        session = aiohttp.ClientSession(connector=connector)
        try:
            while not self._stop.is_set():
                self.next_attempt_at = None
                self._set_state(State.CONNECTING, str(self.url))
                delay_floor = 0.0
                try:
                    await self._connect_and_serve(session)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure of one attempt is judged, recorded, retried
                    self.first_attempt.set()
                    verdict = classify(exc, self._silent_closes, self.proxy_auth_delay)
                    self._silent_closes = self._silent_closes + 1 if verdict.silent_close else 0
                    self.failures += 1
                    self.last_error, self.action = verdict.error, verdict.action
                    if verdict.stop:
                        self.stop_reason = verdict.error
                        log.error("tunnel: stopped: %s; what to do: %s", verdict.error, verdict.action)
                        self._set_state(State.REJECTED, verdict.error)
                        raise Rejected(verdict.error, verdict.action) from exc
                    log.warning("tunnel: attempt %d to %s failed: %s", self.failures, self.url, verdict.error)
                    delay_floor = verdict.min_delay
                if self._stop.is_set():
                    break
                delay = max(self.backoff.next_delay(), delay_floor)
                self.next_attempt_at = time.time() + delay
                self._set_state(State.BACKOFF, f"retry in {delay:.2f}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            self.next_attempt_at = None
            await session.close()
            if self.state is not State.REJECTED:
                self._set_state(State.STOPPED)

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
        closed = asyncio.Event()
        mux = Mux(
            ws.send_bytes,
            self.limits,
            opens_streams=False,
            on_open=self.on_open,
            on_goaway=lambda code, msg: self._on_goaway(mux, code, msg),
            on_close=lambda code, msg: closed.set(),
            name="tunnel",
            capabilities=(p.CAP_CONTROL,) if self.control is not None else (),
            on_control=self.control.on_message if self.control is not None else None,
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
            if self.control is not None:
                self.control.attach(mux)
            self.backoff.reset()
            self.failures = 0
            self._silent_closes = 0
            self.last_error = self.action = None
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
            if self.control is not None:
                self.control.detach(mux)
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

    def report(self) -> TunnelReport:
        """What the status file says about the tunnel (the daemon adds its own fields)."""
        mux = self.mux
        return TunnelReport(
            state=str(self.state),
            since=self.since,
            plane_url=str(self.plane_url),
            connects=self.connects,
            attempts=self.failures,
            next_attempt_at=self.next_attempt_at,
            last_error=self.last_error,
            stop_reason=self.stop_reason,
            action=self.action,
            streams_open=len(mux.streams) if mux is not None and not mux.closed else 0,
            relayed=self.relayed,
        )
