"""A lean HTTP/1.1 keep-alive client for plain-HTTP targets (the relay's hot path).

aiohttp's ClientSession costs about as much CPU per request as the rest of the gateway; this
client does only what the relay needs: one pool of idle connections per target, connected to
addresses the SSRF guard has checked, no redirects, no cookies, no decompression.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from gateway.ssrf import GuardedResolver

MAX_HEAD = 1024 * 1024
READ_CHUNK = 256 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class HTTPError(Exception):
    """The target broke the exchange (bad HTTP, closed mid-response)."""


class ConnectError(OSError):
    """No TCP connection to any of the target's checked addresses."""


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
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
            self.close()
            raise HTTPError(f"target broke the response: {exc or type(exc).__name__}") from None
        except BaseException:
            self.close()
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
        keepalive: float = 30.0,
        max_idle: int = 256,
    ) -> None:
        self.host = host
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
                try:
                    reader, writer = await asyncio.open_connection(
                        info["host"], info["port"], family=info["family"], limit=MAX_HEAD
                    )
                except OSError as exc:
                    last = exc
                    continue
                return _Conn(reader, writer)
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
            self._closed
            or len(self._idle) >= self.max_idle
            or conn.reader.at_eof()
            or conn.writer.is_closing()
        ):
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None = None,
    ) -> Response:
        """Send one request (never following redirects) and return its response head."""
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        has_accept = False
        length: str | None = None
        for k, v in headers:
            lk = k.lower()
            if lk == "content-length":
                length = v
                continue
            if lk == "accept":
                has_accept = True
            lines.append(f"{k}: {v}\r\n")
        if not has_accept:
            lines.append("Accept: */*\r\n")
        streamed = body is not None and not isinstance(body, bytes)
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}\r\n")
        elif streamed:
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
        if conn is not None and not streamed:
            try:
                return await self._exchange(conn, method, head, None, None)
            except _Stale:
                pass  # the target closed an idle connection: a replayable request may go again
        conn = await self._connect()
        try:
            return await self._exchange(conn, method, head, body if streamed else None, length)
        except _Stale as exc:
            raise HTTPError(str(exc)) from None

    async def _exchange(
        self, conn: _Conn, method: str, head: bytes, body: Any, length: str | None
    ) -> Response:
        reader, writer = conn.reader, conn.writer
        try:
            writer.write(head)
            if body is not None:
                chunked = length is None
                async for chunk in body:
                    if not chunk:
                        continue
                    writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await writer.drain()
                if chunked:
                    writer.write(b"0\r\n\r\n")
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
            conn.close()
            raise _Stale(f"connection lost: {exc}") from None
        except asyncio.LimitOverrunError:
            conn.close()
            raise HTTPError(f"response head over {MAX_HEAD} bytes") from None
        except BaseException:
            conn.close()
            raise

    async def close(self) -> None:
        """Close every idle connection; responses in flight close theirs when done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with contextlib.suppress(Exception):
            await self.resolver.close()


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
