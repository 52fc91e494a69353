"""A lean HTTP/1.1 keep-alive client for every target, plain HTTP and TLS (the relay's hot path).

aiohttp's ClientSession costs about as much CPU per request as the rest of the gateway, and it
sends whatever body bytes it is given; this client does only what the relay needs and owns the
framing of every request: one pool of idle connections per target, connected to addresses the
SSRF guard has checked (TLS verified by the target's trust rules), exactly the declared number
of body bytes, no redirects, no cookies, no decompression. A connection that saw any error is
closed, never pooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from gateway.framing import RequestFramingError
from gateway.ssrf import GuardedResolver

MAX_HEAD = 1024 * 1024
READ_CHUNK = 256 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Fields the client writes itself; never taken from the caller's headers.
_OWN_FIELDS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "expect", "te", "upgrade"}
)


class HTTPError(Exception):
    """The target broke the exchange (bad HTTP, closed mid-response)."""


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

    The iterator raises RequestFramingError when the plane's body does not match; the client also
    counts and refuses to write a byte past `length`."""

    chunks: AsyncIterator[bytes]
    length: int | None


class _Conn:
    __slots__ = ("failed", "idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.failed = False  # saw an error of any kind: closed, and never pooled again

    def close(self) -> None:
        self.writer.close()

    def fail(self) -> None:
        self.failed = True
        self.writer.close()


class Response:
    """A response head plus its body, read with read() until b""; close() when done."""

    __slots__ = (
        "_chunk_left",
        "_conn",
        "_left",
        "_mode",
        "_pool",
        "_reusable",
        "content_length",
        "headers",
        "status",
    )

    def __init__(
        self,
        pool: HostPool,
        conn: _Conn,
        status: int,
        headers: list[tuple[str, str]],
        method: str,
        reusable: bool,
    ) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self.status = status
        self.headers = headers
        self._reusable = reusable
        self.content_length: int | None = None
        self._left = 0
        self._chunk_left = 0
        te = cl = None
        for k, v in headers:
            lk = k.lower()
            if lk == "transfer-encoding":
                te = v.lower()
            elif lk == "content-length":
                cl = v
        if method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
            self._mode = "none"
        elif te is not None and "chunked" in te:
            self._mode = "chunked"
        elif cl is not None:
            try:
                self._left = int(cl)
            except ValueError:
                raise HTTPError(f"bad Content-Length {cl[:40]!r}") from None
            if self._left < 0:
                raise HTTPError(f"bad Content-Length {cl[:40]!r}")
            self.content_length = self._left
            self._mode = "fixed"
        else:
            self._mode = "close"
            self._reusable = False
        if self._mode == "none" or (self._mode == "fixed" and self._left == 0):
            self._done()

    def _done(self) -> None:
        conn, self._conn = self._conn, None
        self._mode = "done"
        if conn is not None:
            if self._reusable:
                self._pool._release(conn)
            else:
                conn.close()

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end; HTTPError if the target broke it."""
        conn = self._conn
        if conn is None:
            return b""
        reader = conn.reader
        # Bytes already buffered need no timer: asyncio.timeout costs ~15% of a small request's CPU.
        timeout = None if getattr(reader, "_buffer", None) else self._pool.read_timeout
        try:
            async with asyncio.timeout(timeout):
                if self._mode == "fixed":
                    data = await reader.read(min(self._left, READ_CHUNK))
                    if not data:
                        raise HTTPError(f"connection closed with {self._left} body bytes missing")
                    self._left -= len(data)
                    if self._left == 0:
                        self._done()
                    return data
                if self._mode == "close":
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        self._done()
                    return data
                return await self._read_chunked(reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            self._fail()
            raise HTTPError(f"target broke the response: {exc or type(exc).__name__}") from None
        except BaseException:
            self._fail()
            raise

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        if self._chunk_left == 0:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPError(f"bad chunk size line {line[:40]!r}") from None
            if size < 0:
                raise HTTPError("negative chunk size")
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers are dropped, like every hop-by-hop field
                self._done()
                return b""
            self._chunk_left = size
        data = await reader.read(min(self._chunk_left, READ_CHUNK))
        if not data:
            raise HTTPError("connection closed inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and await reader.readexactly(2) != b"\r\n":
            raise HTTPError("chunk not followed by CRLF")
        return data

    def close(self) -> None:
        """Give the connection back if the body was read to its end, else drop it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

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
        self.tls = tls
        self.port = port
        self.resolver = resolver
        self.host_header = host_header
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._idle: list[_Conn] = []
        self._closed = False

    async def _connect(self) -> _Conn:
        async with asyncio.timeout(self.connect_timeout):
            # Resolved (and checked) on every new connection: no stale DNS-rebinding window.
            addrs = await self.resolver.resolve(self.host, self.port, family=0)  # type: ignore[arg-type]
            last: Exception | None = None
            for info in addrs:
                tls = self.tls
                try:
                    reader, writer = await asyncio.open_connection(
                        info["host"],
                        info["port"],
                        family=info["family"],
                        limit=MAX_HEAD,
                        ssl=tls.context if tls else None,
                        server_hostname=tls.server_hostname if tls else None,
                    )
                except ssl.SSLError as exc:
                    # A certificate (or handshake) refusal says the same at every address.
                    raise TLSVerifyError(getattr(exc, "verify_message", None) or str(exc)) from None
                except OSError as exc:
                    last = exc
                    continue
                conn = _Conn(reader, writer)
                if tls is not None and tls.pin is not None:
                    ssl_object = writer.get_extra_info("ssl_object")
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
            if (
                now - conn.idle_since < self.keepalive
                and not conn.reader.at_eof()
                and not conn.writer.is_closing()
            ):
                return conn
            conn.close()
        return None

    def _release(self, conn: _Conn) -> None:
        if (
            conn.failed
            or self._closed
            or len(self._idle) >= self.max_idle
            or conn.reader.at_eof()
            or conn.writer.is_closing()
        ):
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    @property
    def idle(self) -> tuple[_Conn, ...]:
        """The connections waiting in the pool (for health checks and tests)."""
        return tuple(self._idle)

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
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        has_accept = False
        for k, v in headers:
            lk = k.lower()
            if lk in _OWN_FIELDS:
                continue
            if lk == "accept":
                has_accept = True
            lines.append(f"{k}: {v}\r\n")
        if not has_accept:
            lines.append("Accept: */*\r\n")
        streamed = body if isinstance(body, StreamedBody) else None
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}\r\n")
        elif streamed is not None:
            length = streamed.length
            lines.append(
                f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
            )
        elif method in _BODY_METHODS:
            lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        if isinstance(body, bytes) and body:
            head += body
        conn = self._get_idle()
        if conn is not None and streamed is None:
            try:
                return await self._exchange(conn, method, head, None)
            except _Stale:
                pass  # the target closed an idle connection: a replayable request may go again
        elif conn is not None:
            self._idle.append(conn)  # a streamed body cannot be replayed: use a fresh connection
        conn = await self._connect()
        try:
            return await self._exchange(conn, method, head, streamed)
        except _Stale as exc:
            raise HTTPError(str(exc)) from None

    async def _exchange(self, conn: _Conn, method: str, head: bytes, body: StreamedBody | None) -> Response:
        reader, writer = conn.reader, conn.writer
        try:
            writer.write(head)
            if body is not None:
                await _write_body(writer, body)
            # The caller bounds the wait for the head (the target's total timeout); no second timer.
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        raise _Stale("connection closed before the response") from None
                    raise HTTPError("connection closed inside the response head") from None
                status, headers, reusable = _parse_head(raw)
                if 100 <= status < 200 and status != 101:
                    continue  # interim responses (100 Continue): the real one follows
                return Response(self, conn, status, headers, method, reusable)
        except ConnectionError as exc:
            conn.fail()
            raise _Stale(f"connection lost: {exc}") from None
        except asyncio.LimitOverrunError:
            conn.fail()
            raise HTTPError(f"response head over {MAX_HEAD} bytes") from None
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


async def _write_body(writer: asyncio.StreamWriter, body: StreamedBody) -> None:
    """Exactly `body.length` bytes, or chunked framing of our own; never a byte past the length."""
    length = body.length
    sent = 0
    async for chunk in body.chunks:
        if not chunk:
            continue
        sent += len(chunk)
        if length is None:
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        elif sent > length:
            raise RequestFramingError(f"request body longer than its Content-Length {length}")
        else:
            writer.write(chunk)
        await writer.drain()
    if length is None:
        writer.write(b"0\r\n\r\n")
    elif sent != length:
        raise RequestFramingError(f"request body of {sent} bytes, Content-Length {length}")


class _Stale(HTTPError):
    """The connection died before any response byte (a reused idle connection may be retried)."""


def _parse_head(raw: bytes) -> tuple[int, list[tuple[str, str]], bool]:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise HTTPError(f"bad status line {lines[0][:60]!r}")
    status = int(parts[1])
    http10 = parts[0] == "HTTP/1.0"
    headers: list[tuple[str, str]] = []
    conn_tokens = ""
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(f"bad header line {line[:60]!r}")
        value = value.strip(" \t")
        if name.lower() == "connection":
            conn_tokens += "," + value.lower()
        # Header values are opaque bytes on the wire; keep them byte-exact (surrogate-escape, like the plane).
        headers.append((name, value.encode("latin-1").decode("utf-8", "surrogateescape")))
    tokens = {t.strip() for t in conn_tokens.split(",")}
    reusable = "keep-alive" in tokens if http10 else "close" not in tokens
    return status, headers, reusable
