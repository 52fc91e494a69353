"""A lean HTTP/1.1 keep-alive client for every target, plain HTTP and TLS (the relay's hot path).

aiohttp's ClientSession costs about as much CPU per request as the rest of the gateway, sends
whatever body bytes it is given, and parses responses leniently; this client does only what the
relay needs and owns the framing of every request: one pool of idle connections per target,
connected to addresses the SSRF guard has checked (TLS verified by the target's trust rules),
exactly the declared number of body bytes, no redirects, no cookies, no decompression.

Request and response heads go through `gateway.relay.http1` (h11's grammar plus the strict
checks of docs/protocol.md 5.2.1, tested against h11 as the reference); a chunked response body
is parsed by h11 (python-hyper's HTTP/1.1 state machine, Debian's python3-h11). A connection
that saw any error is closed, never pooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import h11

from gateway.relay.framing import RequestFramingError
from gateway.relay.http1 import (
    HTTPError,
    RequestHeadError,
    ResponseHead,
    check_head,
    parse_response_head,
    request_head,
)
from gateway.relay.ssrf import GuardedResolver

__all__ = [
    "ConnectError",
    "HTTPError",
    "HostPool",
    "Response",
    "StreamedBody",
    "TLSVerifyError",
    "TargetTLS",
    "check_head",
]

MAX_HEAD = 256 * 1024
READ_CHUNK = 256 * 1024
_READ_HIGH = 2 * READ_CHUNK  # pause the socket while this much is buffered and unread
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Fields the client writes itself; never taken from the caller's headers.
_OWN_FIELDS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "expect", "te", "upgrade"}
)
# h11 ends a head at a blank line with or without CR; so do we, to refuse a bare LF there.
_HEAD_END = re.compile(rb"\n\r?\n")
_ACCEPT = (b"Accept", b"*/*")
_JOIN_MAX = 64 * 1024


class ConnectError(OSError):
    """No TCP connection to any of the target's checked addresses."""


class TLSVerifyError(OSError):
    """The target's certificate fails its trust rule (CA file, system store or fingerprint pin)."""


@dataclass(frozen=True)
class TargetTLS:
    """How to speak TLS to a target: the context (its trust rule), the name to send as SNI and to
    check the certificate against, and an optional SHA-256 pin of the leaf certificate (DER)."""

    context: ssl.SSLContext
    server_hostname: str
    pin: bytes | None = None


@dataclass(frozen=True)
class StreamedBody:
    """A request body the relay streams: exactly `length` bytes, or chunked when length is None.

    The iterator raises RequestFramingError when the plane's body does not match; the client
    also counts and refuses to send a byte past `length`."""

    chunks: AsyncIterator[bytes]
    length: int | None


class _Conn(asyncio.Protocol):
    """One target connection: our own buffer (so nothing hides in a library's)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sent = False  # the current request went out whole (head and body)
        self.buffer = bytearray()
        self.eof = False
        self.idle_since = 0.0
        self.failed = False  # saw an error of any kind: closed, and never pooled again
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._read_paused = False

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= _READ_HIGH and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("connection lost"))
            self._drain.exception()

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- used by the client ------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open, not failed, and nothing unsolicited waiting in the buffer."""
        t = self.transport
        return not (self.failed or self.eof or self.buffer or t is None or t.is_closing())

    async def fill(self, timeout: float | None) -> None:
        """Wait until more bytes (or EOF) arrive; the buffer keeps what is already there."""
        if self.eof:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        if timeout is None:  # the caller's deadline bounds it: no timer of our own
            await self._waiter
            return
        async with asyncio.timeout(timeout):
            await self._waiter

    def take(self, n: int) -> bytes:
        """Up to `n` bytes from the front of the buffer."""
        buf = self.buffer
        if len(buf) <= n:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        if self._read_paused and len(buf) < READ_CHUNK and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        """Write bytes the client has framed."""
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the socket's write buffer is full."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        if self._drain is not None:
            await self._drain

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def fail(self) -> None:
        self.failed = True
        if self.transport is not None:
            self.transport.abort()


class Response:
    """A response head plus its body, read with read() until b""; close() when done.

    A chunked body goes to h11 (chunk lines and trailers are where the parsing is); a body of a
    declared length is just that many bytes, read straight from our buffer (h11 would copy every
    byte three more times: a 64 MiB download cost 4x the CPU); a body without either runs to EOF
    and ends the connection."""

    __slots__ = (
        "_conn", "_h11", "_keep_alive", "_left", "_method", "_mode", "_pool", "_raw_head",
        "content_length", "headers", "status",
    )  # fmt: skip

    def __init__(self, pool: HostPool, conn: _Conn, head: ResponseHead, method: str) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self._h11: h11.Connection | None = None
        self._method = method
        self._raw_head = head.raw
        self.status = head.status
        # Header values are opaque bytes on the wire; keep them byte-exact (surrogate-escape, like the plane).
        self.headers = [(k.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for k, v in head.fields]
        self.content_length: int | None = None
        length = head.content_length
        close = False
        names = head.names
        if b"connection" in names:
            if names.count(b"connection") == 1:  # the usual case: one field, found without a scan in Python
                tokens = head.fields[names.index(b"connection")][1].lower()
            else:
                values = [v for n, (_k, v) in zip(names, head.fields, strict=True) if n == b"connection"]
                tokens = b",".join(values).lower()
            close = b"close" in tokens and b"close" in {t.strip() for t in tokens.split(b",")}
        # h11's keep-alive rule: HTTP/1.1 and no "close" among the Connection tokens.
        self._keep_alive = head.http_version == b"1.1" and not close
        self._left = 0
        if method == "HEAD" or self.status in (204, 304):
            self._mode = "none"
        elif head.chunked:
            self._mode = "chunked"
        elif length is not None:
            self._mode = "fixed"
            self._left = self.content_length = length
        else:
            self._mode = "eof"
            self._keep_alive = False

    @property
    def complete(self) -> bool:
        """The whole body is in the buffer already: reading it will not wait."""
        conn = self._conn
        if conn is None or self._mode == "none":
            return True
        return self._mode == "fixed" and len(conn.buffer) >= self._left

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end; HTTPError if the target broke it."""
        conn = self._conn
        if conn is None:
            return b""
        try:
            if self._mode == "chunked":
                return await self._read_chunked(conn)
            if self._mode == "none" or (self._mode == "fixed" and self._left == 0):
                self._finish(conn)
                return b""
            if not conn.buffer:
                # Bytes already buffered need no timer: asyncio.timeout costs ~15% of a small request.
                await conn.fill(self._pool.read_timeout)
                if not conn.buffer:
                    if self._mode == "eof" and conn.eof:
                        self._finish(conn)
                        return b""
                    if conn.eof:
                        raise HTTPError(f"connection closed with {self._left} body bytes missing")
                    return await self.read()
            if self._mode == "eof":
                return conn.take(READ_CHUNK)
            data = conn.take(min(self._left, READ_CHUNK))
            self._left -= len(data)
            return data
        except BaseException:
            self._fail()
            raise

    def _chunk_parser(self) -> h11.Connection:
        """h11, at the start of this response's chunked body (it re-reads the head we checked)."""
        h = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        h.send(h11.Request(method=self._method.encode("ascii"), target=b"/", headers=[(b"Host", b"t")]))
        h.send(h11.EndOfMessage())
        h.receive_data(self._raw_head)
        event = h.next_event()
        if type(event) is not h11.Response:
            raise HTTPError(f"unparsable response head ({type(event).__name__})")
        return h

    async def _read_chunked(self, conn: _Conn) -> bytes:
        try:
            h = self._h11
            if h is None:
                h = self._h11 = self._chunk_parser()
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    if not conn.buffer:
                        timeout = None if conn.eof else self._pool.read_timeout
                        await conn.fill(timeout)
                    h.receive_data(conn.take(READ_CHUNK))  # b"" at EOF: h11 then says what broke
                elif type(event) is h11.Data:
                    return bytes(event.data)
                elif type(event) is h11.EndOfMessage:
                    leftover, _closed = h.trailing_data
                    # h11 reads trailers as leniently as heads (folding, bare LF), and bytes after
                    # the response must never be read as the next one: no reuse after either.
                    if event.headers or leftover:
                        self._keep_alive = False
                    self._finish(conn)
                    return b""
                else:  # ConnectionClosed or PAUSED cannot come before the end of a body
                    raise HTTPError(f"unexpected {type(event).__name__} inside the response body")
        except h11.RemoteProtocolError as exc:
            raise HTTPError(f"target broke the response: {exc}") from None

    def _finish(self, conn: _Conn) -> None:
        self._conn = None
        self._pool._finished(conn, self._keep_alive)

    def close(self) -> None:
        """Drop the connection unless the body was read to its end (then it is pooled already)."""
        self._fail()

    def _fail(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail()


class HostPool:
    """Keep-alive connections to one target host, made only to addresses the SSRF guard allows."""

    def __init__(
        self,
        host: str,
        port: int,
        resolver: GuardedResolver,
        *,
        host_header: str,
        connect_timeout: float,
        read_timeout: float,
        tls: TargetTLS | None = None,
        keepalive: float = 30.0,
        max_idle: int = 256,
    ) -> None:
        self.host = host
        self.port = port
        self.resolver = resolver
        self.host_header = host_header.encode("ascii")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.tls = tls
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._idle: list[_Conn] = []
        self._closed = False

    @property
    def idle(self) -> tuple[_Conn, ...]:
        """The connections waiting in the pool (for health checks and tests)."""
        return tuple(self._idle)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        tls = self.tls
        last: Exception | None = None
        async with asyncio.timeout(self.connect_timeout):
            # Resolved (and checked) on every new connection: no stale DNS-rebinding window.
            addrs = await self.resolver.resolve(self.host, self.port, family=0)  # type: ignore[arg-type]
            for info in addrs:
                conn = _Conn()
                try:
                    await loop.create_connection(
                        lambda conn=conn: conn,
                        info["host"],
                        info["port"],
                        family=info["family"],
                        ssl=tls.context if tls else None,
                        server_hostname=tls.server_hostname if tls else None,
                    )
                except ssl.SSLError as exc:
                    # A certificate (or handshake) refusal says the same at every address.
                    raise TLSVerifyError(getattr(exc, "verify_message", None) or str(exc)) from None
                except OSError as exc:
                    last = exc
                    continue
                if tls is not None and tls.pin is not None:
                    assert conn.transport is not None
                    ssl_object = conn.transport.get_extra_info("ssl_object")
                    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
                    if der is None or hashlib.sha256(der).digest() != tls.pin:
                        conn.fail()
                        raise TLSVerifyError("certificate fingerprint does not match the pin")
                return conn
        raise ConnectError(f"cannot connect to {self.host}:{self.port}: {last}")

    def _get_idle(self) -> _Conn | None:
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.keepalive and conn.usable:
                return conn
            conn.fail()
        return None

    def _finished(self, conn: _Conn, keep_alive: bool) -> None:
        """A response was read to its end: pool the connection only if the exchange was clean
        (keep-alive, nothing unsolicited after the response, our request fully sent)."""
        if (
            not keep_alive
            or self._closed
            or not conn.sent
            or not conn.usable
            or len(self._idle) >= self.max_idle
        ):
            conn.fail()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | StreamedBody | None = None,
    ) -> Response:
        """Send one request (never following redirects) and return its response head.

        The client writes Host and the framing itself (Content-Length, or chunked for a streamed
        body of no declared length) and skips such fields in `headers`."""
        fields: list[tuple[bytes, bytes]] = [(b"Host", self.host_header)]
        has_accept = False
        try:
            for k, v in headers:
                lk = k.lower()
                if lk in _OWN_FIELDS:
                    continue
                if lk == "accept":
                    has_accept = True
                fields.append((k.encode("ascii"), v.encode("utf-8", "surrogateescape")))
        except UnicodeEncodeError as exc:
            raise RequestFramingError(f"request head cannot be sent: {exc}") from None
        if not has_accept:
            fields.append(_ACCEPT)
        streamed = body if isinstance(body, StreamedBody) else None
        if isinstance(body, bytes):
            fields.append((b"Content-Length", b"%d" % len(body)))
        elif streamed is not None:
            length = streamed.length
            fields.append(
                (b"Content-Length", b"%d" % length)
                if length is not None
                else (b"Transfer-Encoding", b"chunked")
            )
        elif method in _BODY_METHODS:
            fields.append((b"Content-Length", b"0"))
        try:
            head = request_head(method, target, fields)
        except RequestHeadError as exc:
            raise RequestFramingError(f"request head cannot be sent: {exc}") from None
        conn = self._get_idle()
        if conn is not None and streamed is None:
            try:
                return await self._exchange(conn, method, head, body)
            except _Stale:
                pass  # the target closed an idle connection: a replayable request may go again
        elif conn is not None:
            self._idle.append(conn)  # a streamed body cannot be replayed: use a fresh connection
        conn = await self._connect()
        try:
            return await self._exchange(conn, method, head, body)
        except _Stale as exc:
            raise HTTPError(str(exc)) from None

    async def _exchange(
        self, conn: _Conn, method: str, head: bytes, body: bytes | StreamedBody | None
    ) -> Response:
        conn.sent = False
        try:
            if isinstance(body, bytes):
                # One write for a small request: one segment, one syscall.
                conn.write(head + body if len(body) <= _JOIN_MAX else head)
                if len(body) > _JOIN_MAX:
                    conn.write(body)
            else:
                conn.write(head)
                if body is not None:
                    await _send_body(conn, body)
            conn.sent = True
            # The caller bounds the wait for the head (the target's total timeout); no second timer.
            return Response(self, conn, await _read_head(conn), method)
        except ConnectionError as exc:
            conn.fail()
            raise _Stale(f"connection lost: {exc}") from None
        except BaseException:
            conn.fail()
            raise

    async def close(self) -> None:
        """Close every idle connection; responses in flight close theirs when done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with contextlib.suppress(Exception):
            await self.resolver.close()


async def _send_body(conn: _Conn, body: StreamedBody) -> None:
    """Exactly `body.length` bytes, or chunked framing of our own; never a byte past the length."""
    length = body.length
    sent = 0
    async for chunk in body.chunks:
        if not chunk:
            continue
        sent += len(chunk)
        if length is None:  # our own chunked framing, as h11 wrote it
            conn.write(b"%x\r\n" % len(chunk))
            conn.write(chunk)
            conn.write(b"\r\n")
        elif sent > length:
            raise RequestFramingError(f"request body longer than its Content-Length {length}")
        else:
            conn.write(chunk)
        await conn.drain()
    if length is None:
        conn.write(b"0\r\n\r\n")
    elif sent != length:
        raise RequestFramingError(f"request body of {sent} bytes, Content-Length {length}")


async def _read_head(conn: _Conn) -> ResponseHead:
    """The final response head (interim 1xx skipped), each head parsed strictly (http1).

    Only the head leaves the buffer: the body's bytes stay there for Response.read."""
    got_any = False
    searched = 0
    while True:
        buf = conn.buffer
        end = _HEAD_END.search(buf, max(0, searched - 2))
        if end is None:
            if len(buf) > MAX_HEAD:
                raise HTTPError(f"response head over {MAX_HEAD} bytes")
            if conn.eof:
                if not got_any and not buf:
                    raise _Stale("connection closed before the response")
                raise HTTPError("connection closed inside the response head")
            searched = len(buf)
            await conn.fill(None)
            got_any = got_any or bool(conn.buffer)
            continue
        head = parse_response_head(conn.take(end.end()))
        searched = 0
        got_any = True
        if head.status >= 200:
            return head
        # 100 Continue and friends: the real response follows (a 101 was refused by the parser).


class _Stale(HTTPError):
    """The connection died before any response byte (a reused idle connection may be retried)."""
