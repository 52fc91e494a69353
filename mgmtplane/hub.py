"""The plane's tunnel hub: accepts gateway tunnels (/v1/tunnel) and relays API calls through them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from gwcore import protocol as p
from gwcore.control import ControlChannel, Message
from gwcore.httpwire import HOP_BY_HOP, TUNNEL_ERROR_HEADER, strip_hop_headers
from gwcore.streams import WS_MAX_MESSAGE, Mux, StreamReset, end_connection, until_either

log = logging.getLogger(__name__)

# A handler of one kind of gateway control message: (gateway id, message) -> reply or None.
PlaneControlHandler = Callable[[str, Message], Awaitable[Message | None]]

RELAY_ROUTE = "/v1/gateways/{gateway_id}/targets/{target}/{path:.*}"
TUNNEL_ROUTE = "/v1/tunnel"
READ_CHUNK = 256 * 1024
# The caller's plane credentials never reach the target; X-Target-Authorization becomes Authorization
# and X-Target-Cookie becomes Cookie (a SOAP session cookie such as vmware_soap_session).
# Expect: 100-continue is answered by the plane's own HTTP server, never forwarded.
_PLANE_ONLY = frozenset({"authorization", "cookie", "x-forwarded-for", "x-real-ip", "expect"})
_TARGET_CREDENTIALS = {"x-target-authorization": "Authorization", "x-target-cookie": "Cookie"}
_DROP_REQUEST = _PLANE_ONLY | HOP_BY_HOP

STATUS_FOR_CODE: dict[p.ErrorCode, int] = {
    p.ErrorCode.TARGET_UNKNOWN: 404,
    p.ErrorCode.FILTERED: 403,
    p.ErrorCode.ADDRESS_FORBIDDEN: 403,
    p.ErrorCode.BAD_REQUEST: 400,
    p.ErrorCode.TARGET_TIMEOUT: 504,
    p.ErrorCode.HEARTBEAT_TIMEOUT: 504,
    p.ErrorCode.TOO_MANY_STREAMS: 503,
    p.ErrorCode.GOING_AWAY: 503,
    p.ErrorCode.BUSY: 503,
}


def peer_common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The subject CN of a verified client certificate (None without one)."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    subject: Any = cert.get("subject", ())
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    """The DER of a verified client certificate (None without one)."""
    if ssl_object is None or not ssl_object.getpeercert():
        return None
    return ssl_object.getpeercert(binary_form=True)


def der_fingerprint(der: bytes) -> str:
    """`sha256:<hex>` of a certificate's DER, as the registry records it."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


@dataclass
class GatewaySession:
    """One gateway's tunnel (the latest one) and what the admin API shows about it."""

    gateway_id: str
    remote: str | None
    connected_since: datetime
    mux: Mux | None = None
    last_error: str | None = None
    connected: bool = True
    relayed: int = 0
    ws: web.WebSocketResponse | None = field(default=None, repr=False)
    control: ControlChannel | None = field(default=None, repr=False)
    cert_der: bytes | None = field(default=None, repr=False)  # the client certificate it presented

    @property
    def cert_fingerprint(self) -> str | None:
        """The fingerprint of the certificate this tunnel was admitted with."""
        return der_fingerprint(self.cert_der) if self.cert_der is not None else None

    def snapshot(self) -> dict[str, Any]:
        """JSON-friendly state for the admin API."""
        mux = self.mux
        return {
            "id": self.gateway_id,
            "connected": self.connected,
            "connected_since": self.connected_since.isoformat() if self.connected else None,
            "remote": self.remote,
            "streams_open": len(mux.streams) if mux is not None and not mux.closed else 0,
            "relayed": self.relayed,
            "last_error": self.last_error,
        }


# What the plane accepts. Response bodies flow towards the plane, so its stream window sets the
# bulk rate: one stream's credit must cover the pipeline (read, frame, TLS, WebSocket, write out)
# several times over. 4 MiB per stream roughly doubles a large download over the 1 MiB default
# (bench/relay.py), and the 64 MiB connection window keeps the default's 16:1 ratio, so one
# stalled caller can hold back at most a sixteenth of the connection.
PLANE_LIMITS = p.Limits(initial_stream_window=4 * 1024 * 1024, initial_connection_window=64 * 1024 * 1024)


class Hub:
    """Live gateway tunnels by gateway id."""

    def __init__(self, limits: p.Limits | None = None, drain_timeout: float = 10.0) -> None:
        self.limits = limits or PLANE_LIMITS
        self.drain_timeout = drain_timeout
        self._sessions: dict[str, GatewaySession] = {}
        self._closing = False
        self._control_handlers: dict[str, PlaneControlHandler] = {}
        self._on_connect: list[Callable[[GatewaySession], None]] = []

    def register_control(self, kind: str, handler: PlaneControlHandler) -> None:
        """Serve gateways' control messages of `kind` (protocol §13); the handler gets the gateway id."""
        self._control_handlers[kind] = handler

    def on_connect(self, callback: Callable[[GatewaySession], None]) -> None:
        """Call `callback` with each new tunnel's session, once its mux has started."""
        self._on_connect.append(callback)

    def live(self) -> list[GatewaySession]:
        """The current session of every connected gateway."""
        return [s for s in self._sessions.values() if s.connected and s.mux is not None and not s.mux.closed]

    def evict(self, gateway_id: str, notice: Message | None, message: str) -> bool:
        """Close a gateway's live tunnel now (revocation): `notice` first if it takes control
        messages, then GOAWAY, then the close; open streams fail. True if a tunnel was live."""
        session = self._sessions.get(gateway_id)
        mux = session.mux if session is not None else None
        if session is None or mux is None or mux.closed:
            return False
        if notice is not None and session.control is not None:
            session.control.send(notice)
        mux.goaway(p.ErrorCode.GOING_AWAY, message)
        mux.close(p.ErrorCode.GOING_AWAY, message)  # the writer flushes notice and GOAWAY first
        session.last_error = message
        log.warning("gateway %s: tunnel closed: %s", gateway_id, message)
        return True

    def control(self, gateway_id: str) -> ControlChannel | None:
        """The control channel of a gateway's live tunnel, if it has one that takes control messages."""
        session = self._sessions.get(gateway_id)
        channel = session.control if session is not None and session.connected else None
        return channel if channel is not None and channel.ready else None

    def sessions(self) -> list[dict[str, Any]]:
        """Per-gateway state: id, connected, connected_since, remote, streams_open, relayed, last_error."""
        return [s.snapshot() for s in sorted(self._sessions.values(), key=lambda s: s.gateway_id)]

    def session(self, gateway_id: str) -> GatewaySession | None:
        """The session for a gateway (connected or not), or None if it never connected."""
        return self._sessions.get(gateway_id)

    async def handle_tunnel(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/tunnel: a gateway's WebSocket, identified by its client certificate."""
        transport = request.transport
        gateway_id = peer_common_name(transport.get_extra_info("ssl_object") if transport else None)
        if gateway_id is None:
            message = "the tunnel needs a gateway client certificate"
            return _refusal(401, "client-certificate-required", message)
        admit = request.app.get(ADMIT_KEY)
        refused = await admit(request, gateway_id) if admit is not None else None
        if refused is not None:
            log.warning("gateway %s: tunnel refused: %s: %s", gateway_id, *refused)
            return _refusal(403, *refused)
        if self._closing:
            return _json_error(503, "going-away", "the plane is shutting down")
        ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE, compress=False, autoping=True)
        await ws.prepare(request)
        previous = self._sessions.get(gateway_id)
        if previous is not None and previous.mux is not None and not previous.mux.closed:
            log.info("gateway %s: new tunnel replaces the old one", gateway_id)
            previous.mux.goaway(p.ErrorCode.GOING_AWAY, "replaced by a newer tunnel")
        session = GatewaySession(gateway_id, request.remote, datetime.now(UTC), ws=ws)
        session.cert_der = peer_certificate(transport.get_extra_info("ssl_object") if transport else None)
        control = ControlChannel(f"hub[{gateway_id[:8]}]")
        for kind, handler in self._control_handlers.items():
            control.register(kind, functools.partial(handler, gateway_id))
        session.control = control
        closed = asyncio.Event()
        mux = Mux(
            ws.send_bytes,
            self.limits,
            opens_streams=True,
            on_close=lambda code, msg: closed.set(),
            name=f"hub[{gateway_id[:8]}]",
            capabilities=(p.CAP_CONTROL,),
            on_control=control.on_message,
        )
        control.attach(mux)
        session.mux = mux
        self._sessions[gateway_id] = session
        log.info("gateway %s: tunnel up from %s", gateway_id, request.remote)
        mux.start()
        for callback in self._on_connect:
            callback(session)
        receiver = asyncio.create_task(self._receive(ws, mux))
        try:
            await until_either(receiver, closed)
        finally:
            await control.close()
            reason = mux.close_reason
            mux.close(p.ErrorCode.GOING_AWAY, "tunnel closed")
            await end_connection(mux, ws.close, receiver, reason)
            session.connected = False
            if reason is not None and reason[0] not in (p.ErrorCode.NO_ERROR, p.ErrorCode.GOING_AWAY):
                session.last_error = f"{reason[0]}: {reason[1]}"
            elif ws.close_code not in (None, 1000, 1001) and session.last_error is None:
                session.last_error = f"WebSocket closed with code {ws.close_code}"
            log.info("gateway %s: tunnel down (%s)", gateway_id, session.last_error or "closed")
        return ws

    async def _receive(self, ws: web.WebSocketResponse, mux: Mux) -> None:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                mux.feed(msg.data)
                if mux.closed:
                    return
            elif msg.type is WSMsgType.ERROR:
                return
            else:
                mux.close(p.ErrorCode.PROTOCOL_ERROR, f"unexpected {msg.type.name} message")
                return

    def route(self, gateway_id: str) -> tuple[GatewaySession, Mux] | None:
        """The session and tunnel that serve a relay call for `gateway_id`; None when it is offline.

        The one place that gives a gateway's tunnel for a call (both public paths ask it); a site's
        route chooses the gateway first (mgmtplane.site_routes, docs/sites.md).
        """
        session = self._sessions.get(gateway_id)
        # The hub cannot tell "never registered" from "registered, not connected yet": both are 503.
        mux = session.mux if session is not None else None
        if session is None or mux is None or mux.closed or not session.connected:
            return None
        return session, mux

    async def handle_relay(self, request: web.Request) -> web.StreamResponse:
        """ANY /v1/gateways/{id}/targets/{target}/{path}: stream a request through the gateway's tunnel.

        The aiohttp path, for connections aiohttp already serves; `mgmtplane.front` serves the
        same route on its lean path with the same rules (request_head, error_body, STATUS_FOR_CODE).
        """
        gateway_id = request.match_info["gateway_id"]
        routed = self.route(gateway_id)
        if routed is None:
            return _json_error(503, *offline(gateway_id))
        session, mux = routed
        if not mux.ready.is_set():
            await wait_ready(mux)
        has_body = request.body_exists
        head = request_head(
            request.method, request.match_info["target"], request.raw_path, request.headers.items()
        )
        try:
            stream = mux.open(head, fin=not has_body)
        except StreamReset as exc:
            return _json_error(STATUS_FOR_CODE.get(exc.code, 502), str(exc.code), exc.detail)
        except p.ProtocolError as exc:
            return _json_error(400, "bad-request", exc.message)
        session.relayed += 1
        pump = asyncio.create_task(pump_body(request, stream)) if has_body else None
        try:
            try:
                rhead = await stream.response()
            except StreamReset as exc:
                return _json_error(STATUS_FOR_CODE.get(exc.code, 502), str(exc.code), exc.detail)
            return await send_response(request, stream, rhead, gateway_id)
        finally:
            stream.reset(p.ErrorCode.CANCELLED, "caller went away")
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump

    def _live(self) -> list[tuple[GatewaySession, Mux]]:
        return [(s, s.mux) for s in self._sessions.values() if s.mux is not None and not s.mux.closed]

    async def drain(self, timeout: float | None = None) -> bool:
        """Planned shutdown, step 1: GOAWAY to every gateway, refuse new relay calls, and wait
        (bounded) for in-flight streams. Call it before the runner's cleanup: from then on aiohttp
        stops reading every connection, tunnels included. True if everything drained."""
        self._closing = True
        live = self._live()
        for _session, mux in live:
            mux.goaway(p.ErrorCode.GOING_AWAY, "plane shutting down")
        deadline = time.monotonic() + (self.drain_timeout if timeout is None else timeout)
        drained = True
        for _session, mux in live:
            drained = await mux.drain(max(0.0, deadline - time.monotonic())) and drained
        return drained

    async def shutdown(self, app: web.Application) -> None:
        """on_shutdown: GOAWAY (if drain() did not already) and close every tunnel with 1001.

        aiohttp has stopped reading connections by now, so waiting for streams here is useless:
        whatever is still open is reset, and the gateways reconnect with backoff.
        """
        self._closing = True
        live = self._live()
        for _session, mux in live:
            mux.goaway(p.ErrorCode.GOING_AWAY, "plane shutting down")

        async def close(ws: web.WebSocketResponse) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=b"plane shutting down"), 1.0)

        await asyncio.gather(*(close(s.ws) for s, _mux in live if s.ws is not None))


async def send_response(
    request: web.Request, stream: Any, rhead: p.ResponseHead, gateway_id: str
) -> web.StreamResponse:
    """The target's response to the caller on the aiohttp path (the gateway route and the site route)."""
    headers = strip_hop_headers(rhead.headers)
    body = stream.read_complete() if whole_body_ok(request.method, rhead.status) else None
    if body is not None:
        # The response ended in the same tunnel read: send head and body in one write.
        whole = web.Response(status=rhead.status, body=body)
        for key, value in headers:
            if key.lower() != "content-length":  # aiohttp sets it from the body
                whole.headers.add(key, value)
        return whole
    resp = web.StreamResponse(status=rhead.status)
    for key, value in headers:
        resp.headers.add(key, value)
    try:
        await resp.prepare(request)
        while chunk := await stream.read():
            await resp.write(chunk)
        await resp.write_eof()
    except StreamReset as exc:
        # Headers are gone already: the only honest signal left is an aborted connection.
        log.info("gateway %s: stream %d reset mid-body: %s", gateway_id, stream.id, exc)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError as exc:
        log.debug("gateway %s: stream %d: caller went away: %s", gateway_id, stream.id, exc)
    return resp


def whole_body_ok(method: str, status: int) -> bool:
    """Whether a response may go out as one piece with its Content-Length set from the body.

    HEAD, 1xx, 204 and 304 carry no body but may carry the entity's Content-Length: those keep
    the target's headers as they are (the streaming path)."""
    return method != "HEAD" and status >= 200 and status not in (204, 304)


def request_head(
    method: str, target: str, raw_path: str, headers: Iterable[tuple[str, str]]
) -> p.RequestHead:
    """The OPEN head for a relay call: the path after the target as sent (raw_path keeps the
    caller's percent-encoding and query), the plane-only headers dropped, X-Target-* renamed."""
    parts = raw_path.split("/", 6)
    path = "/" + (parts[6] if len(parts) > 6 else "")
    items = list(headers)
    out = []
    connection = False
    # One pass with one lower() per header: this runs for every relayed call.
    for key, value in items:
        lower = key.lower()
        if lower in _DROP_REQUEST:
            connection = connection or lower == "connection"
            continue
        renamed = _TARGET_CREDENTIALS.get(lower)
        out.append((renamed, value) if renamed is not None else (key, value))
    if connection:
        # Connection may name more headers to drop (RFC 9110 7.6.1): the general rule, in full.
        out = []
        for key, value in strip_hop_headers(items):
            lower = key.lower()
            if lower in _TARGET_CREDENTIALS:
                out.append((_TARGET_CREDENTIALS[lower], value))
            elif lower not in _PLANE_ONLY:
                out.append((key, value))
    return p.RequestHead(method, target, path, tuple(out))


def offline(gateway_id: str) -> tuple[str, str]:
    """The error code and message of a relay call for a gateway without a live tunnel."""
    return "gateway-offline", f"gateway {gateway_id} is not connected"


async def wait_ready(mux: Mux) -> None:
    """Wait (bounded) for the gateway's HELLO on a tunnel that has just come up."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(mux.ready.wait(), 5.0)


def error_body(code: str, message: str) -> bytes:
    """The JSON body of every plane refusal (docs/protocol.md §9)."""
    return json.dumps({"error": code, "message": message}).encode()


async def pump_body(request: web.Request, stream: Any) -> None:
    """Stream the caller's request body into the tunnel stream (the aiohttp path)."""
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            await stream.write(chunk)
        stream.end()
    except StreamReset:
        pass
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        stream.reset(p.ErrorCode.CANCELLED, f"request body: {exc}")


def _refusal(status: int, code: str, message: str) -> web.Response:
    # The Tunnel-Error header is how a gateway knows the refusal is the hub's, not a load
    # balancer's or a WAF's in front of it, and stops instead of retrying (docs/protocol.md §1).
    resp = _json_error(status, code, message)
    resp.headers[TUNNEL_ERROR_HEADER] = f"{code}: {message}"
    return resp


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status, text=error_body(code, message).decode(), content_type="application/json"
    )


HUB_KEY = web.AppKey("gateway_hub", Hub)
# Optional: (request, gateway id) -> None to admit, or (code, message) for a 403 on the tunnel.
Admit = Callable[[web.Request, str], Awaitable[tuple[str, str] | None]]
ADMIT_KEY: web.AppKey[Admit] = web.AppKey("tunnel_admit")


def setup_hub(app: web.Application, hub: Hub | None = None) -> Hub:
    """Add /v1/tunnel and the relay route to `app`; the Hub is stored under HUB_KEY."""
    hub = hub or Hub()
    app[HUB_KEY] = hub
    app.router.add_get(TUNNEL_ROUTE, hub.handle_tunnel)
    app.router.add_route("*", RELAY_ROUTE, hub.handle_relay)
    app.on_shutdown.append(hub.shutdown)  # type: ignore[arg-type]
    return hub
