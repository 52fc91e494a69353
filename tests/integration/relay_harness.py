"""A plane we control byte for byte, wired to the gateway's real Mux and Relay, and a raw target
that records every byte it receives.

The plane side sends whatever frames (and frame splits) a test asks for, so OPEN/DATA boundaries,
framing headers and hostile bodies are the test's inputs; the target parses what reaches it with a
strict HTTP/1.1 request parser of its own and keeps the raw bytes of every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from gateway.relay.relay import Relay
from gwcore import protocol as p
from gwcore.streams import WS_MAX_MESSAGE, Mux

PLANE_LIMITS = p.Limits(initial_stream_window=4 << 20, initial_connection_window=64 << 20)


@dataclass
class Outcome:
    """What the plane got back on one stream: a response (head + body) or a RESET."""

    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    reset: p.ErrorCode | None = None
    message: str = ""
    done: bool = False

    def header(self, name: str) -> str | None:
        """The first value of a response header (case-insensitive), or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class _PlaneEnd:
    """What the plane's end of a tunnel sees: response heads, bodies and RESETs, by stream."""

    def __init__(self) -> None:
        self._decoder = p.Decoder(p.ABSOLUTE_MAX_FRAME, p.ABSOLUTE_MAX_FRAME)
        self.outcomes: dict[int, Outcome] = {}
        self._changed = asyncio.Event()
        self.goaway: tuple[int, p.ErrorCode, str] | None = None

    def _reply(self, data: bytes) -> None:
        raise NotImplementedError

    def _received(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            sid = frame.stream_id
            out = self.outcomes.setdefault(sid, Outcome()) if sid else None
            t = frame.type
            if t is p.FrameType.OPEN and out is not None:
                head = p.decode_response_head(frame.payload)
                out.status, out.headers = head.status, head.headers
                out.done = bool(frame.flags & p.FLAG_FIN)
            elif t is p.FrameType.DATA and out is not None:
                out.body += frame.payload
                out.done = out.done or bool(frame.flags & p.FLAG_FIN)
                n = len(frame.payload)
                if n:  # the plane's application consumed it: give the credit back
                    self._reply(p.encode_window(sid, n) + p.encode_window(0, n))
            elif t is p.FrameType.END and out is not None:
                out.done = True
            elif t is p.FrameType.RESET and out is not None:
                out.reset, out.message = p.decode_reset(frame.payload)
                out.done = True
            elif t is p.FrameType.PING:
                self._reply(p.encode_pong(p.decode_ping(frame.payload)))
            elif t is p.FrameType.GOAWAY:
                self.goaway = p.decode_goaway(frame.payload)
        self._changed.set()

    async def outcome(self, sid: int, timeout: float = 10) -> Outcome:
        """Wait until stream `sid` has finished (FIN or RESET) and return what came back."""
        async with asyncio.timeout(timeout):
            while not (sid in self.outcomes and self.outcomes[sid].done):
                self._changed.clear()
                await self._changed.wait()
        return self.outcomes[sid]


class HostilePlane(_PlaneEnd):
    """The plane's end of a tunnel connection, in memory: raw frames in, decoded frames out."""

    def __init__(self, relay: Relay, limits: p.Limits | None = None) -> None:
        super().__init__()
        self.relay = relay
        self.mux = Mux(self._from_gateway, limits or p.Limits(), opens_streams=False, on_open=relay.on_open)

    async def __aenter__(self) -> HostilePlane:
        self.mux.start()
        self.feed(p.encode_hello(p.Hello(limits=PLANE_LIMITS)))
        await asyncio.wait_for(self.mux.ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.mux.stop()

    async def _from_gateway(self, data: bytes) -> None:
        self._received(data)

    def _reply(self, data: bytes) -> None:
        self.mux.feed(data)

    def feed(self, data: bytes, splits: Iterable[int] | None = None) -> None:
        """Deliver `data` to the gateway as one message, or cut at the offsets in `splits`."""
        cuts = sorted({c for c in (splits or ()) if 0 < c < len(data)})
        start = 0
        for cut in [*cuts, len(data)]:
            self.mux.feed(data[start:cut])
            start = cut

    def feed_bytewise(self, data: bytes) -> None:
        """Deliver `data` one byte per message."""
        self.feed(data, range(1, len(data)))

    async def feed_paced(self, data: bytes, splits: Iterable[int]) -> None:
        """Like feed(), but let the event loop run (the relay included) between the pieces."""
        cuts = sorted({c for c in splits if 0 < c < len(data)})
        start = 0
        for cut in [*cuts, len(data)]:
            self.mux.feed(data[start:cut])
            start = cut
            await asyncio.sleep(0)


class HostileHub(_PlaneEnd):
    """A plane that speaks the real wire (mTLS WebSocket on loopback) but sends whatever frames,
    cut into whatever messages, a test asks for. The gateway's real TunnelClient dials it."""

    def __init__(self) -> None:
        super().__init__()
        self.ws: web.WebSocketResponse | None = None
        self.connected = asyncio.Event()
        self._done = asyncio.Event()
        self._replies: list[bytes] = []

    def _reply(self, data: bytes) -> None:
        self._replies.append(data)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE, compress=False)
        await ws.prepare(request)
        self.ws = ws
        await ws.send_bytes(p.encode_hello(p.Hello(limits=PLANE_LIMITS)))
        self.connected.set()
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                self._received(msg.data)
                replies, self._replies = self._replies, []
                if replies:
                    await ws.send_bytes(b"".join(replies))
        self._done.set()
        return ws

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/tunnel", self._handle)
        return app

    async def send(self, data: bytes, splits: Iterable[int] = ()) -> None:
        """Send `data` to the gateway as one WebSocket message, or cut at the offsets in `splits`."""
        assert self.ws is not None
        cuts = sorted({c for c in splits if 0 < c < len(data)})
        start = 0
        for cut in [*cuts, len(data)]:
            await self.ws.send_bytes(data[start:cut])
            start = cut

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


def request_frames(
    sid: int,
    method: str,
    target: str,
    path: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    pieces: int = 1,
) -> bytes:
    """OPEN (FIN when `body` is None) then the body in `pieces` DATA frames, the last with FIN."""
    head = p.RequestHead(method, target, path, tuple(headers))
    if body is None:
        return p.encode_request_head(sid, head, fin=True)
    out = [p.encode_request_head(sid, head)]
    step = max(1, -(-len(body) // pieces))
    chunks = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    for i, chunk in enumerate(chunks):
        out.append(p.encode_data(sid, chunk, fin=i == len(chunks) - 1))
    return b"".join(out)


# --- the target ----------------------------------------------------------------------------------


@dataclass
class TargetRequest:
    """One request as the target parsed it, with the exact bytes it came in."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class _Bad(Exception):
    pass


def _parse_request(buf: bytes) -> tuple[TargetRequest, int] | None:
    """One complete request from the start of `buf` and its length; None if incomplete; _Bad if broken."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1":
        raise _Bad(f"bad request line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or "\n" in line:
            raise _Bad(f"bad header line {line[:80]!r}")
        headers.append((name, value.strip()))
    names = [k.lower() for k, _ in headers]
    pos = end + 4
    if "transfer-encoding" in names:
        if "content-length" in names or names.count("transfer-encoding") != 1:
            raise _Bad("ambiguous framing")
        te = next(v for k, v in headers if k.lower() == "transfer-encoding")
        if te.lower() != "chunked":
            raise _Bad(f"transfer-encoding {te!r}")
        body = b""
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size_text = buf[pos:eol].split(b";", 1)[0]
            if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                raise _Bad(f"bad chunk size {buf[pos:eol][:40]!r}")
            size = int(size_text, 16)
            pos = eol + 2
            if size == 0:
                while True:  # trailers, then the empty line
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        return None
                    line_empty = eol == pos
                    pos = eol + 2
                    if line_empty:
                        break
                break
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos : pos + size]
            if buf[pos + size : pos + size + 2] != b"\r\n":
                raise _Bad("chunk not followed by CRLF")
            pos += size + 2
    elif "content-length" in names:
        if names.count("content-length") != 1:
            raise _Bad("repeated content-length")
        value = next(v for k, v in headers if k.lower() == "content-length")
        if not value.isdigit() or not value.isascii():
            raise _Bad(f"bad content-length {value!r}")
        length = int(value)
        if len(buf) < pos + length:
            return None
        body = buf[pos : pos + length]
        pos += length
    else:
        body = b""
    return TargetRequest(parts[0], parts[1], headers, body, buf[:pos]), pos


Responder = Callable[[TargetRequest], bytes]


def ok_response(body: bytes = b"ok", ctype: str = "application/octet-stream") -> bytes:
    """A complete HTTP/1.1 200 response."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        ctype.encode(),
        len(body),
        body,
    )


def echo(req: TargetRequest) -> bytes:
    """Answer with the request body."""
    return ok_response(req.body)


@dataclass
class RecordingTarget:
    """A raw HTTP/1.1 target on 127.0.0.1: every byte per connection, every request it parsed."""

    respond: Responder = echo
    ssl_context: ssl.SSLContext | None = None
    port: int = 0
    connections: list[bytearray] = field(default_factory=list)
    requests: list[TargetRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    leftovers: list[bytes] = field(default_factory=list)
    # For each leftover: whether the gateway had closed that connection (FIN or RST) by then.
    leftover_closed_by_peer: list[bool] = field(default_factory=list)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    @property
    def received(self) -> bytes:
        """Every byte of every connection, in order."""
        return b"".join(bytes(c) for c in self.connections)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = bytearray()
        self.connections.append(raw)
        self._writers.add(writer)
        buf = b""
        peer_closed = False
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    peer_closed = True
                    break
                raw += data
                buf += data
                while buf:
                    try:
                        parsed = _parse_request(buf)
                    except _Bad as exc:
                        self.errors.append(str(exc))
                        return
                    if parsed is None:
                        break
                    req, used = parsed
                    buf = buf[used:]
                    self.requests.append(req)
                    writer.write(self.respond(req))
                    await writer.drain()
        except (ConnectionError, ssl.SSLError):
            peer_closed = True
        except asyncio.CancelledError:
            pass
        finally:
            if buf:
                self.leftovers.append(buf)
                self.leftover_closed_by_peer.append(peer_closed)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._writers.discard(writer)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RecordingTarget]:
        """Listen on a free loopback port while the context is open."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            try:
                yield self
            finally:
                server.close()
                for writer in list(self._writers):
                    writer.close()
                await asyncio.sleep(0.01)
