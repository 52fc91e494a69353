"""The tunnel client: dial the plane (mTLS, pinned CA, optional CONNECT proxy), serve streams, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from gwcore.streams import WS_MAX_MESSAGE, Mux, OpenHandler, Stream, end_connection

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


@dataclass
class _Connection:
    """One WebSocket to the plane and its mux (a handover briefly has two)."""

    ws: aiohttp.ClientWebSocketResponse
    mux: Mux
    receiver: asyncio.Task[None]
    closed: asyncio.Event
    serving: asyncio.Event = field(default_factory=asyncio.Event)  # the serve loop took it over


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
        self.stop_code: str | None = None  # the stop as a code (retry_policy: revoked, expired, ...)
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
        # Moving to a new connection (rotate): the live one, the session that dials, the one
        # offered to the serve loop, and the old ones draining.
        self._current: _Connection | None = None
        self._session: aiohttp.ClientSession | None = None
        self._rotating = False
        self._handover: asyncio.Future[_Connection] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._rejection: tuple[str, str, str] | None = None

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
        # Two: the live connection and, while rotate() moves to a new certificate, the next one.
        connector = aiohttp.TCPConnector(force_close=True, limit=2)
        session = aiohttp.ClientSession(connector=connector)
        self._session = session
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
                        self.stop_reason, self.stop_code = verdict.error, verdict.code
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
            if self._rejection is not None:
                self.stop_reason, self.action, self.stop_code = self._rejection
                self.last_error = self.stop_reason
                log.error("tunnel: stopped: %s; what to do: %s", self.stop_reason, self.action)
                self._set_state(State.REJECTED, self.stop_reason)
                raise Rejected(self.stop_reason, self.action)
        finally:
            self.next_attempt_at = None
            for task in list(self._retiring):
                task.cancel()
            for task in list(self._retiring):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._session = None
            await session.close()
            if self.state is not State.REJECTED:
                self._set_state(State.STOPPED)

    async def _dial(self, session: aiohttp.ClientSession) -> _Connection:
        """Open one WebSocket with the current TLS context and exchange HELLOs."""
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
        if self._current is None:
            self.mux, self._ws = mux, ws  # shown in report() while the HELLOs are exchanged
        mux.start()
        receiver = asyncio.create_task(self._receive(ws, mux), name="tunnel-receive")
        conn = _Connection(ws, mux, receiver, closed)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await mux.ready.wait()
            if mux.closed:
                raise ConnectionError(f"tunnel closed during HELLO: {mux.close_reason}")
        except BaseException:
            mux.close(p.ErrorCode.GOING_AWAY, "tunnel connection lost")
            await end_connection(mux, ws.close, conn.receiver, mux.close_reason)
            if self._current is None:
                self.mux, self._ws = None, None
            raise
        return conn

    async def _connect_and_serve(self, session: aiohttp.ClientSession) -> None:
        conn: _Connection | None = await self._dial(session)
        while conn is not None:
            conn = await self._serve(conn)

    async def _serve(self, conn: _Connection) -> _Connection | None:
        """Serve one connection until it ends (None) or rotate() hands over a newer one (returned)."""
        mux, ws = conn.mux, conn.ws
        handed_over = False
        handover: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self._current, self.mux, self._ws, self._handover = conn, mux, ws, handover
        drainer: asyncio.Task[None] | None = None
        try:
            self.connects += 1
            self.connected_at = time.time()
            if self.control is not None:
                self.control.attach(mux)
            self.backoff.reset()
            self.failures = 0
            self._silent_closes = 0
            self.last_error = self.action = None
            if self.state is State.CONNECTED:
                log.info("tunnel: moved to connection %d (new TLS identity)", self.connects)
            self._set_state(State.CONNECTED, f"connection {self.connects}")
            conn.serving.set()
            self.connected.set()
            self.first_attempt.set()
            closed_wait = asyncio.create_task(conn.closed.wait())
            waits: set[asyncio.Future[object]] = {conn.receiver, closed_wait, handover}  # type: ignore[arg-type]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed_wait.cancel()
            if handover.done() and not handover.cancelled() and not mux.closed:
                handed_over = True
                old = asyncio.create_task(self._retire(conn), name="tunnel-retire")
                self._retiring.add(old)
                old.add_done_callback(self._retiring.discard)
                return handover.result()
            drainer = self._drainer
            reason = mux.close_reason
            if reason is not None and reason[0] is not p.ErrorCode.CANCELLED:
                self.last_error = f"{reason[0]}: {reason[1]}"
            elif ws.closed:
                self.last_error = f"plane closed the WebSocket (code {ws.close_code})"
            log.info("tunnel: disconnected: %s", self.last_error or "stopped")
            return None
        finally:
            self._handover = None
            if not handover.done():
                handover.cancel()
            elif not handed_over and not handover.cancelled():
                # The old connection ended just as a new one was handed over: end that one too
                # (the run loop reconnects, with the new identity).
                orphan = handover.result()
                orphan.mux.close(p.ErrorCode.CANCELLED, "tunnel connection lost")
                await end_connection(orphan.mux, orphan.ws.close, orphan.receiver, None)
            if not handed_over:
                self._current = None
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
                await end_connection(mux, ws.close, conn.receiver, reason)
                self._ws = None
                self.mux = None

    async def rotate(self, ssl_context: ssl.SSLContext) -> bool:
        """Use `ssl_context` from now on, moving the live connection to it without dropping streams.

        Make before break: a second connection is dialled with the new context; once its HELLO is
        done it takes the plane's new streams and the old one drains (bounded by drain_timeout)
        and closes. True when the new context is in use (or will be at the next connection, with
        none live now); False when the new connection failed and the old one carries on.
        """
        self.ssl = ssl_context
        conn, session = self._current, self._session
        if conn is None or conn.mux.closed or session is None or self._stop.is_set():
            return True
        if self._rotating:
            return False
        self._rotating = True
        try:
            try:
                new = await self._dial(session)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("tunnel: a connection with the new TLS identity failed: %s", classify(exc).error)
                self._rotating = False
                goaway = conn.mux.goaway_received
                if conn is self._current and goaway is not None and self._drainer is None:
                    # The plane saw the new connection start and left the old one: drain, reconnect.
                    self._on_goaway(conn.mux, goaway[1], goaway[2])
                return False
            handover = self._handover
            if conn is not self._current or handover is None or handover.done() or conn.mux.closed:
                # The old connection ended meanwhile: the run loop reconnects with the new context.
                new.mux.close(p.ErrorCode.CANCELLED, "superseded")
                await end_connection(new.mux, new.ws.close, new.receiver, None)
                return True
            handover.set_result(new)
            # Until the serve loop uses it (or it ended with the old one: the run loop reconnects).
            waits = [asyncio.create_task(new.serving.wait()), asyncio.create_task(new.closed.wait())]
            try:
                await asyncio.wait(waits, timeout=self.connect_timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            return True
        finally:
            self._rotating = False

    async def _retire(self, conn: _Connection) -> None:
        """The old connection of a handover: no new streams on it, finish the open ones, close."""
        mux = conn.mux
        # The reference hub sends GOAWAY on the old connection as soon as the new one arrives;
        # waiting a moment for it spares a stream the plane opened there just before a race with
        # ours. A plane that sends none hears ours.
        try:
            for _ in range(20):
                if mux.goaway_received is not None or mux.closed:
                    break
                await asyncio.sleep(0.05)
            mux.goaway(p.ErrorCode.NO_ERROR, "moved to a new connection")
            if not await mux.drain(self.drain_timeout):
                log.warning("tunnel: %d streams still open on the old connection after %.0fs",
                            len(mux.streams), self.drain_timeout)  # fmt: skip
        finally:
            reason = mux.close_reason
            mux.close(p.ErrorCode.CANCELLED, "moved to a new connection")
            await end_connection(mux, conn.ws.close, conn.receiver, reason)

    def use_context(self, ssl_context: ssl.SSLContext) -> None:
        """Use `ssl_context` for the next connections (a new trusted CA set); the live one carries on."""
        self.ssl = ssl_context

    def reject(self, error: str, action: str, code: str) -> None:
        """Stop for good, as on an explicit rejection (the plane said so over the tunnel)."""
        if self._rejection is None:
            self._rejection = (error, action, code)
        self._stop.set()
        conn = self._current
        if conn is not None:
            conn.mux.close(p.ErrorCode.CANCELLED, error)

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
        if self._rotating or mux is not self.mux:
            return  # a connection being replaced: rotate() and _retire() look after it
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
            stop_code=self.stop_code,
            action=self.action,
            streams_open=len(mux.streams) if mux is not None and not mux.closed else 0,
            relayed=self.relayed,
        )
