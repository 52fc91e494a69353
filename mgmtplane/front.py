"""The plane's public listener: the relay route on a lean HTTP/1.1 path, everything else to aiohttp.

aiohttp's request machinery (request objects, routing, middleware, a response object, and two
socket writes for the head and the body) cost the plane more CPU than the relay itself
(docs/relay-performance.md). Every connection starts here. The first request line decides:
a relay call (`/v1/gateways/{id}/targets/{target}/...`) stays on this path for the life of the
connection, anything else (the tunnel's WebSocket, registration, the admin API) is handed to
aiohttp's own protocol with the bytes read so far, as if aiohttp had accepted it.

The lean path parses with aiohttp's own C parser (llhttp, the same limits and strictness as the
aiohttp server it replaces), reads request bodies through aiohttp's StreamReader (flow control),
writes each response head together with its body when the body is already there, and keeps one
idle deadline per connection. The relay rules (header mapping, error codes, the choice of tunnel)
are the hub's, shared with `Hub.handle_relay` (docs/relay-performance.md, issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import unquote

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from gwcore import protocol as p
from gwcore.streams import Stream, StreamReset
from mgmtplane import front_wire as wire
from mgmtplane.hub import (
    HUB_KEY,
    STATUS_FOR_CODE,
    Hub,
    error_body,
    offline,
    request_head,
    wait_ready,
    whole_body_ok,
)
from mgmtplane.site_routes import SITES_KEY, Opened, SiteRouter, stop_call

log = logging.getLogger(__name__)

# Optional app key: the relay route's authorisation, given the Authorization header's value;
# returns None to admit or the refusal (status, error code, message, extra headers).
Refusal = tuple[int, str, str, tuple[tuple[str, str], ...]]
RelayAuth = Callable[[str], Refusal | None]
RELAY_AUTH_KEY: web.AppKey[RelayAuth] = web.AppKey("relay_auth")

KEEPALIVE_S = 75.0  # aiohttp's default, kept: an idle keep-alive connection is closed after it
MAX_QUEUED = 16  # pipelined requests parsed ahead of the one being served, before reading pauses
_LINE_LIMIT = 8190  # aiohttp's request-line limit: longer lines go to aiohttp, which refuses them
_PREFIXES = (b"/v1/gateways/", b"/v1/sites/")
# A relay call's route: ("gateway" or "site", the gateway id or site name, the target), percent-encoded.
Route = tuple[str, str, str]
# A request head (every header line) larger than this is refused while it arrives. llhttp bounds
# each line (8 KiB) but not their number; the tunnel takes 64 KiB of head at most anyway.
_HEAD_LIMIT = 256 * 1024
_RAW_LIMIT = 64 * 1024  # bytes after a bridged Upgrade request held until it has gone to aiohttp
_JOIN_LIMIT = 64 * 1024  # response pieces up to this size are joined into one write


class Front:
    """The protocol factory of a public listener; `shutdown` closes its lean connections."""

    def __init__(
        self,
        hub: Hub,
        fallback: Callable[[], asyncio.Protocol],
        auth: RelayAuth | None,
        sites: SiteRouter | None = None,
    ) -> None:
        self.hub = hub
        self.sites = sites  # the site route on the lean path too (docs/sites.md), when the app has it
        self.fallback = fallback
        self.auth = auth
        self.conns: set[_Conn] = set()
        self.closing = False

    def __call__(self) -> asyncio.Protocol:
        return _Conn(self)

    def route(self, target: str) -> Route | None:
        """The relay route a request-target names, or None for any other (aiohttp's) route."""
        found = wire.route(target)
        if found is not None:
            return ("gateway", *found)
        found = wire.site_route(target) if self.sites is not None else None
        return ("site", *found) if found is not None else None

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now, busy ones after their current response; abort the rest
        after `timeout` (the hub's drain has already let in-flight relay calls finish)."""
        self.closing = True
        for conn in list(self.conns):
            conn.close_when_idle()
        deadline = time.monotonic() + timeout
        while self.conns and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.abort()


class _Conn(BaseProtocol):
    """One public connection: undecided until its first request line, then lean or aiohttp's."""

    def __init__(self, front: Front) -> None:
        super().__init__(asyncio.get_running_loop())
        self.front = front
        self._pending = b""
        self._parser: HttpRequestParser | None = None
        self._queue: deque[tuple[RawRequestMessage, StreamReader]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._busy = False
        self._closing = False
        self._upgraded = False
        self._bad: str | None = None
        self._head_bytes = 0  # fed since the last complete head, outside any body
        self._last_payload: StreamReader | None = None
        self._current: Stream | None = None
        self._payload: StreamReader | None = None
        self._last_use = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        # Bridged: a request for another route came on this lean connection. From then on every
        # request goes to aiohttp's protocol, in order, rebuilt from what our parser read.
        self._handler: asyncio.Protocol | None = None
        self._raw: bytearray | None = None  # bytes after an Upgrade request, not HTTP
        self._raw_open = False  # the Upgrade request has gone to aiohttp: so may the bytes after it

    # --- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.front.conns.add(self)
        self._last_use = self._loop.time()
        self._idle_timer = self._loop.call_later(KEEPALIVE_S, self._idle_check)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._handler is not None:
            self._handler.connection_lost(exc if isinstance(exc, Exception) else None)
        self.front.conns.discard(self)
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._current is not None:
            self._current.reset(p.ErrorCode.CANCELLED, "caller went away")
        payloads = [payload for _msg, payload in self._queue]
        if self._payload is not None:
            payloads.append(self._payload)
        for payload in payloads:
            if payload is not EMPTY_PAYLOAD and not payload.is_eof():
                payload.set_exception(ConnectionResetError("connection lost"))
        self._queue.clear()
        self._wakeup()

    def _idle_check(self) -> None:
        # One timer per connection, re-armed from the last use: no timer per request.
        if self.transport is None:
            return
        idle_for = self._loop.time() - self._last_use
        if not self._busy and not self._queue and idle_for >= KEEPALIVE_S:
            self.transport.close()
            return
        self._idle_timer = self._loop.call_later(max(1.0, KEEPALIVE_S - idle_for), self._idle_check)

    def close_when_idle(self) -> None:
        self._closing = True
        if self.transport is not None and not self._busy and not self._queue:
            self.transport.close()
        self._wakeup()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- input ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            self._decide(data)
            return
        if self._upgraded:
            if self._raw is not None:  # after a bridged Upgrade: the bytes are aiohttp's
                self._raw += data
                self._flush_raw()
                if self._raw and len(self._raw) > _RAW_LIMIT:
                    self.pause_reading()  # until the Upgrade request itself has gone to aiohttp
            return  # else: dropped; after a lean or refused request, the connection closes
        last = self._last_payload
        in_body = last is not None and not last.is_eof()
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except BadHttpMessage as exc:
            self._refuse_bad(exc.message)
            return
        if not messages and not in_body:
            self._head_bytes += len(data)
            if self._head_bytes > _HEAD_LIMIT:
                self._refuse_bad(f"request head over {_HEAD_LIMIT // 1024} KiB")
                return
        if messages:
            self._head_bytes = 0
            self._last_payload = messages[-1][1]
            self._queue.extend(messages)
            if len(self._queue) > MAX_QUEUED:
                self.pause_reading()
            self._wakeup()
        if upgraded:
            # What follows an Upgrade request is not HTTP. Kept for aiohttp if that request will be
            # bridged (another route); after a relay call, which does not upgrade, it is dropped.
            self._upgraded = True
            request = messages[-1][0] if messages else None
            if request is not None and (self._handler is not None or self.front.route(request.path) is None):
                self._raw = bytearray(tail)

    def eof_received(self) -> bool:
        if self._handler is not None:
            return bool(self._handler.eof_received())
        if self._parser is not None:
            with contextlib.suppress(Exception):
                self._parser.feed_eof()
        return False

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._handler is not None:
            self._handler.resume_writing()

    def _decide(self, data: bytes) -> None:
        """The first request line picks the path; until it is whole, bytes wait here."""
        pending = self._pending + data
        eol = pending.find(b"\n")
        if eol < 0 and len(pending) <= _LINE_LIMIT:
            self._pending = pending
            return
        self._pending = b""
        words = pending[:eol].split(b" ") if eol >= 0 else []
        target = words[1] if len(words) == 3 else b""
        if (
            not target.startswith(_PREFIXES)
            or self.front.route(target.decode("latin-1")) is None
            or self.front.closing
        ):
            self._hand_over(pending)
            return
        self._parser = HttpRequestParser(
            self, self._loop, 2**16, max_line_size=8190, max_field_size=8190, auto_decompress=False
        )
        self._worker = self._loop.create_task(self._serve_all())
        self.data_received(pending)

    def _hand_over(self, pending: bytes) -> None:
        """Give the connection to aiohttp's protocol, as if aiohttp had accepted it."""
        transport = self.transport
        assert transport is not None
        self.front.conns.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        handler = self.front.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            handler.pause_writing()
        if pending:
            handler.data_received(pending)

    def _refuse_bad(self, message: object) -> None:
        # Stop parsing (the byte stream has lost its framing); answered after the queued requests.
        self._upgraded = True
        self._raw = None
        self._bad = str(message)[:200]
        self._wakeup()

    async def _bridge(self, msg: RawRequestMessage, payload: StreamReader) -> None:
        """Pass one request to aiohttp's protocol on this connection, rebuilt from the parsed
        message: the same request line and header fields, the body as it arrives (re-chunked if
        it came chunked). aiohttp writes its answers to the transport itself, after ours."""
        handler = self._handler
        transport = self.transport
        if transport is None:
            return
        if handler is None:
            self.front.conns.discard(self)  # aiohttp's server owns its shutdown from now on
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            handler = self._handler = self.front.fallback()
            handler.connection_made(transport)
            if self._paused:
                handler.pause_writing()
        head = b"%s %s HTTP/%d.%d\r\n" % (
            msg.method.encode("ascii"),
            msg.path.encode("utf-8", "surrogateescape"),
            *msg.version,
        )
        handler.data_received(head + b"".join(b"%s: %s\r\n" % kv for kv in msg.raw_headers) + b"\r\n")
        if payload is not EMPTY_PAYLOAD:
            while True:
                try:
                    chunk = await payload.readany()
                except ConnectionError:
                    return  # the caller went away; aiohttp's protocol hears of it from connection_lost
                if not chunk:
                    break
                handler.data_received(b"%x\r\n%b\r\n" % (len(chunk), chunk) if msg.chunked else chunk)
            if msg.chunked:
                handler.data_received(b"0\r\n\r\n")
        if self._upgraded and not self._queue:  # that was the Upgrade request: the rest is raw
            self._raw_open = True
            self._flush_raw()

    def _flush_raw(self) -> None:
        if self._handler is not None and self._raw_open and self._raw is not None:
            data, self._raw = bytes(self._raw), bytearray()
            if self._reading_paused:
                self.resume_reading()
            if data:
                self._handler.data_received(data)

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    # --- serving, one request at a time, in order ------------------------------------------------

    async def _serve_all(self) -> None:
        try:
            while True:
                while not self._queue:
                    if self._handler is not None:
                        if self._bad is not None:
                            self._handler.data_received(b"\x00\r\n\r\n")  # aiohttp answers 400, in order
                        if self._bad is not None or self._upgraded or self.transport is None:
                            return
                    elif self._bad is not None:
                        self._write_error(400, "bad-request", self._bad, False, "GET")
                    if self._handler is None and (self._closing or self.transport is None or self._upgraded):
                        if self.transport is not None:
                            self.transport.close()
                        return
                    self._wake = self._loop.create_future()
                    await self._wake
                    self._wake = None
                msg, payload = self._queue.popleft()
                if self._reading_paused and len(self._queue) < MAX_QUEUED // 2:
                    self.resume_reading()
                route = self.front.route(msg.path) if self._handler is None else None
                if route is None:
                    self._busy = True
                    try:
                        await self._bridge(msg, payload)
                    finally:
                        self._busy = False
                    continue
                self._busy = True
                try:
                    keep = await self._serve(msg, payload, route)
                finally:
                    self._busy = False
                    self._current = None
                    self._payload = None
                    self._last_use = self._loop.time()
                if not keep or self.transport is None:
                    if self.transport is not None:
                        self.transport.close()
                    return
        except Exception:  # a bug here must not leave a caller hanging
            log.exception("public connection failed")
            if self.transport is not None:
                self.transport.abort()

    async def _serve(self, msg: RawRequestMessage, payload: StreamReader, route: Route) -> bool:
        """Answer one relay call; False when the connection must close after it."""
        keep = not msg.should_close and not self._closing
        keep = await self._relay(msg, payload, route, keep)
        if keep and not payload.is_eof():
            keep = await _discard(payload)
        return keep

    async def _relay(self, msg: RawRequestMessage, payload: StreamReader, route: Route, keep: bool) -> bool:
        front = self.front
        gateway_id, target = unquote(route[1]), unquote(route[2])
        # A refusal before 100 Continue means the caller will not send its body: the connection,
        # its parser mid-request, closes after the answer (the caller learns it from the answer).
        refused_keep = keep and (payload.is_eof() or not wire.expects_continue(msg))
        if front.auth is not None:
            refused = front.auth(msg.headers.get("Authorization", ""))
            if refused is not None:
                status, code, message, extra = refused
                self._write_error(status, code, message, refused_keep, msg.method, extra)
                return refused_keep
        if "/" in gateway_id or "/" in target:
            self._write_error(404, "not-found", "no such route", refused_keep, msg.method)
            return refused_keep
        if route[0] == "site":
            return await self._relay_site(msg, payload, gateway_id, target, keep, refused_keep)
        routed = front.hub.route(gateway_id)
        if routed is None:
            self._write_error(503, *offline(gateway_id), refused_keep, msg.method)
            return refused_keep
        session, mux = routed
        if not mux.ready.is_set():
            await wait_ready(mux)
        has_body = payload is not EMPTY_PAYLOAD  # as aiohttp's body_exists
        head = request_head(msg.method, target, msg.path, msg.headers.items())
        try:
            stream = mux.open(head, fin=not has_body)
        except StreamReset as exc:
            self._write_error(
                STATUS_FOR_CODE.get(exc.code, 502), str(exc.code), exc.detail, refused_keep, msg.method
            )
            return refused_keep
        except p.ProtocolError as exc:
            self._write_error(400, "bad-request", exc.message, refused_keep, msg.method)
            return refused_keep
        session.relayed += 1
        self._current = stream
        pump = None
        if has_body:
            self._payload = payload
            if wire.expects_continue(msg):
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            pump = self._loop.create_task(_pump_body(payload, stream))
        try:
            try:
                rhead = await stream.response()
            except StreamReset as exc:
                self._write_error(
                    STATUS_FOR_CODE.get(exc.code, 502), str(exc.code), exc.detail, keep, msg.method
                )
                return keep
            return await self._respond(msg, stream, rhead, keep)
        finally:
            stream.reset(p.ErrorCode.CANCELLED, "caller went away")
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump

    async def _relay_site(
        self,
        msg: RawRequestMessage,
        payload: StreamReader,
        site: str,
        target: str,
        keep: bool,
        refused_keep: bool,
    ) -> bool:
        """A site's relay call (docs/sites.md): the gateway and the failover are the site router's."""
        assert self.front.sites is not None
        has_body = payload is not EMPTY_PAYLOAD
        pumped = False

        def on_open(stream: Stream) -> asyncio.Task[None] | None:
            nonlocal pumped
            self._current = stream
            if not has_body:
                return None
            pumped = True  # the body is being read: the connection stays in step after an error
            self._payload = payload
            if wire.expects_continue(msg):
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return self._loop.create_task(_pump_body(payload, stream))

        head = request_head(msg.method, target, msg.path, msg.headers.items())
        opened = await self.front.sites.open_call(site, target, msg.method, head, has_body, on_open)
        if not isinstance(opened, Opened):
            keep = keep if pumped else refused_keep
            self._write_error(*opened, keep, msg.method)
            return keep
        try:
            return await self._respond(msg, opened.stream, opened.rhead, keep)
        finally:
            await stop_call(opened.stream, opened.pump)

    async def _respond(
        self, msg: RawRequestMessage, stream: Stream, rhead: p.ResponseHead, keep: bool
    ) -> bool:
        headers, dated, sized = wire.response_headers(rhead.headers)
        extra = "" if dated else f"Date: {wire.Date.now()}\r\n"
        if msg.version < (1, 1) and keep:
            extra += "Connection: keep-alive\r\n"
        body = stream.read_complete() if whole_body_ok(msg.method, rhead.status) else None
        if body is not None:
            # The response ended in the same tunnel read: head and body in one write.
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            extra += f"Content-Length: {len(body)}\r\n"
            if not keep:
                extra += "Connection: close\r\n"
            self._write(wire.head(rhead.status, headers, extra) + body)
            return keep
        bodiless = not whole_body_ok(msg.method, rhead.status)  # HEAD, 1xx, 204, 304
        chunked = not bodiless and not sized and msg.version >= (1, 1)
        if chunked:
            extra += "Transfer-Encoding: chunked\r\n"
        elif not bodiless and not sized:
            keep = False  # HTTP/1.0 without a length: the body ends with the connection
        if not keep:
            extra += "Connection: close\r\n"
        head = wire.head(rhead.status, headers, extra)
        try:
            if bodiless:
                self._write(head)
                while await stream.read():
                    pass  # no body may follow this head; wait for the gateway's end of stream
                return keep
            # Whatever is buffered goes out with the head, and the body's end with its last bytes:
            # one write (one send) per tunnel read, however the response was cut into messages.
            frame = wire.chunk if chunked else wire.raw
            parts = [head, *frame(stream.read_nowait())]
            while True:
                rest = stream.read_complete()  # None until the gateway has ended the body
                if rest is not None:
                    parts += frame(rest)
                    self._write_parts([*parts, b"0\r\n\r\n"] if chunked else parts)
                    break
                self._write_parts(parts)
                if self._paused:
                    with contextlib.suppress(ConnectionError):
                        await self._drain_helper()
                if self.transport is None:
                    return False
                parts = frame(await stream.read())
        except StreamReset as exc:
            # The head is gone already: the only honest signal left is an aborted connection.
            log.info("stream %d reset mid-body: %s", stream.id, exc)
            self.abort()
            return False
        return keep

    # --- output ---------------------------------------------------------------------------------

    def _write_parts(self, parts: list[bytes]) -> None:
        # Small pieces are joined into one write (one send); large ones are written as they are,
        # since copying megabytes to save a system call costs memory and time.
        if sum(len(part) for part in parts) <= _JOIN_LIMIT:
            self._write(b"".join(parts))
            return
        for part in parts:
            if part:
                self._write(part)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _write_error(
        self,
        status: int,
        code: str,
        message: str,
        keep: bool,
        method: str,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        body = error_body(code, message)
        headers = [("Content-Type", "application/json; charset=utf-8"), *extra_headers]
        extra = f"Content-Length: {len(body)}\r\nDate: {wire.Date.now()}\r\n"
        if method == "HEAD":
            body = b""
        if not keep:
            extra += "Connection: close\r\n"
        self._write(wire.head(status, headers, extra) + body)


async def _pump_body(payload: StreamReader, stream: Stream) -> None:
    try:
        while chunk := await payload.readany():
            await stream.write(chunk)
        stream.end()
    except StreamReset:
        pass
    except Exception as exc:  # the caller's side failed (connection lost, bad chunking)
        stream.reset(p.ErrorCode.CANCELLED, f"request body: {exc}")


async def _discard(payload: StreamReader, limit: float = 2.0) -> bool:
    """Read what is left of an unread request body (bounded), so the connection can serve the
    next request and the caller sees our answer rather than a reset; False to close instead."""
    try:
        async with asyncio.timeout(limit):
            while await payload.readany():
                pass
    except Exception:  # timed out, connection lost, bad chunking
        return False
    return True


class FrontSite(web.BaseSite):
    """A public listener of an AppRunner whose app has the hub (setup_hub): the relay route on the
    lean path, every other request to the app as with web.TCPSite / web.SockSite."""

    __slots__ = ("_front", "_host", "_port", "_shutdown", "_sock")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 10.0,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self._sock = host, port, sock
        self._shutdown = shutdown_timeout
        self._front: Front | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        if self._sock is not None:
            host, port = self._sock.getsockname()[:2]
        else:
            host, port = self._host, self._port
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        runner = self._runner
        assert isinstance(runner, web.AppRunner) and runner.server is not None
        app = runner.app
        self._front = Front(app[HUB_KEY], runner.server, app.get(RELAY_AUTH_KEY), app.get(SITES_KEY))
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(
                self._front, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                self._front, self._host, self._port or 0, ssl=self._ssl_context, backlog=self._backlog
            )

    async def stop(self) -> None:
        await super().stop()
        if self._front is not None:
            await self._front.shutdown(self._shutdown)
