"""Stream multiplexing over one tunnel connection: flow control, batching, heartbeat (both ends use it).

The streams themselves are gwcore.stream's; this module owns the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable

from gwcore import protocol as p
from gwcore.stream import Stream, StreamReset

__all__ = ["MAX_BATCH", "OUT_HIGH", "WS_MAX_MESSAGE", "Mux", "OpenHandler", "Stream", "StreamReset"]

log = logging.getLogger(__name__)

# A batch of frames goes out as one WebSocket message; keep it well under the peers' message limit.
MAX_BATCH = 256 * 1024
# Body bytes queued for the WebSocket beyond which writers wait for the writer to catch up. Credit
# alone would let one side queue up to the peer's whole connection window (64 MiB from the plane)
# when its uplink is slower than its targets; this keeps the queue at a couple of batches.
OUT_HIGH = 2 * MAX_BATCH
WS_MAX_MESSAGE = 8 * 1024 * 1024
_MAX_WINDOW = 0x7FFFFFFF


OpenHandler = Callable[[Stream], None]


class Mux:
    """Both ends of a tunnel connection: owns the streams, credits, write batching and heartbeat."""

    def __init__(
        self,
        send: Callable[[bytes], Awaitable[None]],
        local: p.Limits,
        *,
        opens_streams: bool,
        on_open: OpenHandler | None = None,
        on_goaway: Callable[[p.ErrorCode, str], None] | None = None,
        on_close: Callable[[p.ErrorCode, str], None] | None = None,
        name: str = "tunnel",
        capabilities: tuple[str, ...] = (),
        on_control: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        self._send = send
        self.local = local
        self.peer = p.Limits()  # replaced by the peer's HELLO
        self.name = name
        self.opens_streams = opens_streams
        self._on_open = on_open
        self._on_goaway = on_goaway
        self._on_close = on_close
        self._on_control = on_control
        self._hello = p.Hello(limits=local, capabilities=capabilities)
        self.peer_hello: p.Hello | None = None
        self.ready = asyncio.Event()
        self.streams: dict[int, Stream] = {}
        self.send_credit = 0
        self.recv_window = local.initial_connection_window
        self._conn_unacked = 0
        self._credit_waiters: set[Stream] = set()
        self._decoder = p.Decoder(local.max_frame_size, local.max_header_block)
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        # The newest PING not answered yet: one PONG per writer turn, however many PINGs came.
        self._pong: int | None = None
        self._out_event = asyncio.Event()
        self._writable = asyncio.Event()  # set while the queue is below OUT_HIGH
        self.out_high = OUT_HIGH  # streams' writers wait while more than this is queued
        self._writable.set()
        self._next_id = 1
        self._last_peer_id = 0
        self.goaway_sent = False
        self.goaway_received: tuple[int, p.ErrorCode, str] | None = None
        self.closed = False
        self.close_reason: tuple[p.ErrorCode, str] | None = None
        self._loop = asyncio.get_running_loop()
        self.last_rx = self._loop.time()
        self._ping_ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._drained = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Send HELLO and start the writer and heartbeat tasks."""
        self._queue(p.encode_hello(self._hello))
        self._tasks.append(asyncio.create_task(self._writer(), name=f"{self.name}-writer"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name=f"{self.name}-heartbeat"))

    async def stop(self) -> None:
        """Close (if not already) and wait for the mux's own tasks."""
        self.close(p.ErrorCode.CANCELLED, "stopped")
        await self._flush_then_stop()

    async def _flush_then_stop(self) -> None:
        writer = self._tasks[0] if self._tasks else None
        for task in self._tasks[1:]:
            task.cancel()
        if writer is not None and not writer.done():
            self._out_event.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(writer), 1.0)
            writer.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def close(self, code: p.ErrorCode, message: str = "") -> None:
        """Mark the connection dead: every open stream fails with `code`."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = (code, message)
        error = StreamReset(code, message or "tunnel connection closed")
        for stream in list(self.streams.values()):
            stream._fail(error)
        self.streams.clear()
        self._drained.set()
        self.ready.set()  # release waiters; they check `closed`
        self._writable.set()
        if self._on_close is not None:
            self._on_close(code, message)

    def goaway(self, code: p.ErrorCode = p.ErrorCode.NO_ERROR, message: str = "") -> None:
        """Tell the peer we will take no new streams; existing ones may finish."""
        if self.goaway_sent or self.closed:
            return
        self.goaway_sent = True
        self._queue(p.encode_goaway(self._last_peer_id, code, message))
        if not self.streams:
            self._drained.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until no stream is open (True) or `timeout` passes (False)."""
        if not self.streams:
            return True
        self._drained.clear()
        if not self.streams:
            return True
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- opening streams (the plane) ------------------------------------------------------------

    def open(self, head: p.RequestHead, fin: bool = False) -> Stream:
        """Open a stream carrying `head`; StreamReset if the connection cannot take it now."""
        if self.closed:
            raise StreamReset(p.ErrorCode.GOING_AWAY, "tunnel connection closed")
        if self.goaway_received is not None or self.goaway_sent:
            raise StreamReset(p.ErrorCode.GOING_AWAY, "tunnel is draining")
        if len(self.streams) >= self.peer.max_streams:
            raise StreamReset(p.ErrorCode.TOO_MANY_STREAMS, f"{len(self.streams)} streams open")
        sid = self._next_id
        frame = p.encode_request_head(sid, head, fin)
        try:
            self._check_head_size(frame)
        except p.ProtocolError as exc:
            raise StreamReset(p.ErrorCode.BAD_REQUEST, exc.message) from None
        self._next_id += 1
        stream = Stream(self, sid, head)
        stream._head = self._loop.create_future()
        self.streams[sid] = stream
        self._queue(frame)
        if fin:
            stream.tx_fin = True
        return stream

    # --- output ---------------------------------------------------------------------------------

    # --- control messages (protocol §13) ---------------------------------------------------------

    @property
    def control_ok(self) -> bool:
        """Both sides announced CONTROL in HELLO, so messages may flow (False before the peer's HELLO)."""
        peer = self.peer_hello
        mine = self._hello.capabilities
        return peer is not None and p.CAP_CONTROL in peer.capabilities and p.CAP_CONTROL in mine

    def send_control(self, message: dict[str, object]) -> None:
        """Queue one CONTROL message; ProtocolError if the peer cannot take it (no capability, too big)."""
        if self.closed:
            raise p.ProtocolError("tunnel connection closed", p.ErrorCode.GOING_AWAY)
        if not self.control_ok:
            raise p.ProtocolError("the peer does not take CONTROL messages")
        frame = p.encode_control(message)
        self._check_head_size(frame)
        self._queue(frame)

    def _on_control_frame(self, payload: bytes) -> None:
        if p.CAP_CONTROL not in self._hello.capabilities:
            raise p.ProtocolError("CONTROL frame, but this side did not announce it")
        try:
            message = p.decode_control(payload)
        except p.ProtocolError as exc:
            # One malformed message costs itself, not every stream on the tunnel.
            log.warning("%s: malformed CONTROL message dropped: %s", self.name, exc.message)
            return
        if self._on_control is not None:
            self._on_control(message)

    def _check_head_size(self, frame: bytes) -> None:
        # An oversized head would be a protocol error at the peer and kill every stream: refuse it here.
        size = len(frame) - p.HEADER_SIZE
        if size > self.peer.max_header_block:
            raise p.ProtocolError(
                f"head of {size} bytes exceeds the peer's {self.peer.max_header_block}-byte limit"
            )

    def _queue(self, frame: bytes) -> None:
        if self.closed and not self._tasks:
            return
        self._out.append(frame)
        self._out_size += len(frame)
        self._out_event.set()

    def _queue_data(self, sid: int, data: memoryview, fin: bool) -> None:
        # Header and payload go out as separate items so the payload is copied once, in the batch join.
        self._out.append(p.HEADER.pack(p.DATA_TYPE_BYTE, p.FLAG_FIN if fin else 0, sid, len(data)))
        self._out.append(data)
        self._out_size += p.HEADER_SIZE + len(data)
        self._out_event.set()
        if self._out_size > OUT_HIGH:
            self._writable.clear()

    async def _writer(self) -> None:
        out = self._out
        try:
            while True:
                if self._pong is not None:
                    pong = p.encode_pong(self._pong)
                    self._pong = None
                    out.insert(0, pong)  # liveness first: it costs 18 bytes
                    self._out_size += len(pong)
                if not out:
                    if self.closed:
                        return
                    self._out_event.clear()
                    await self._out_event.wait()
                    continue
                if self._out_size <= MAX_BATCH:
                    batch = b"".join(out)
                    out.clear()
                    self._out_size = 0
                else:
                    size, i = 0, 0
                    while i < len(out) and size < MAX_BATCH:
                        size += len(out[i])
                        i += 1
                    # Never split a DATA header from its payload.
                    if i < len(out) and isinstance(out[i], memoryview):
                        size += len(out[i])
                        i += 1
                    batch = b"".join(out[:i])
                    del out[:i]
                    self._out_size -= size
                await self._send(batch)
                if self._out_size <= OUT_HIGH:
                    self._writable.set()
        except (ConnectionError, RuntimeError, OSError) as exc:
            log.debug("%s: writer stopped: %s", self.name, exc)
            self.close(p.ErrorCode.INTERNAL, f"write failed: {exc}")

    # --- input ----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Process one received message; protocol violations send GOAWAY and close."""
        if self.closed:
            return
        self.last_rx = self._loop.time()
        try:
            for frame in self._decoder.feed(data):
                self._dispatch(frame)
        except p.ProtocolError as exc:
            log.warning("%s: protocol error from peer: %s", self.name, exc)
            self._queue(p.encode_goaway(self._last_peer_id, exc.code, exc.message))
            self.goaway_sent = True
            self.close(exc.code, exc.message)

    def _dispatch(self, f: p.Frame) -> None:
        t = f.type
        if self.peer_hello is None and t is not p.FrameType.HELLO:
            raise p.ProtocolError(f"expected HELLO, got {t.name}")
        if t is p.FrameType.DATA:
            self._on_data(f)
        elif t is p.FrameType.WINDOW:
            self._on_window(f.stream_id, p.decode_window(f.payload))
        elif t is p.FrameType.OPEN:
            self._on_open_frame(f)
        elif t is p.FrameType.END:
            stream = self.streams.get(f.stream_id)
            if stream is not None:
                stream._on_data(b"", True)
        elif t is p.FrameType.RESET:
            code, message = p.decode_reset(f.payload)
            stream = self.streams.get(f.stream_id)
            if stream is not None:
                stream._fail(StreamReset(code, message or "reset by peer"))
        elif t is p.FrameType.PING:
            # Coalesced (docs/protocol.md 7): a flood of PINGs leaves one PONG pending, not one each.
            self._pong = p.decode_ping(f.payload)
            self._out_event.set()
        elif t is p.FrameType.PONG:
            pass  # last_rx is already updated: any frame proves the link is alive
        elif t is p.FrameType.HELLO:
            self._on_hello(f.payload)
        elif t is p.FrameType.GOAWAY:
            self._on_goaway_frame(f.payload)
        elif t is p.FrameType.CONTROL:
            self._on_control_frame(f.payload)

    def _on_hello(self, payload: bytes) -> None:
        if self.peer_hello is not None:
            raise p.ProtocolError("second HELLO")
        hello = p.decode_hello(payload)
        p.negotiate_version(self._hello, hello)
        self.peer_hello = hello
        self.peer = hello.limits
        self.send_credit = hello.limits.initial_connection_window
        self.ready.set()

    def _on_data(self, f: p.Frame) -> None:
        n = len(f.payload)
        if n > self.recv_window:
            raise p.ProtocolError("connection flow-control window exceeded", p.ErrorCode.FLOW_CONTROL)
        self.recv_window -= n
        stream = self.streams.get(f.stream_id)
        if stream is None or stream.rx_fin:
            self._check_known(f.stream_id)
            # Late data for a stream we already reset: give the connection credit straight back.
            self._conn_consumed(n)
            return
        if n > stream.recv_window:
            self._conn_consumed(n)
            stream.reset(p.ErrorCode.FLOW_CONTROL, "stream flow-control window exceeded")
            return
        stream.recv_window -= n
        stream._on_data(f.payload, bool(f.flags & p.FLAG_FIN))

    def _check_known(self, sid: int) -> None:
        newest = self._next_id - 1 if self.opens_streams else self._last_peer_id
        if sid > newest:
            raise p.ProtocolError(f"frame for stream {sid} that was never opened")

    def _on_window(self, sid: int, increment: int) -> None:
        if sid == 0:
            self.send_credit += increment
            if self.send_credit > _MAX_WINDOW:
                raise p.ProtocolError("connection window above 2^31-1", p.ErrorCode.FLOW_CONTROL)
            waiters, self._credit_waiters = self._credit_waiters, set()
            for stream in waiters:
                stream._wake_tx()
            return
        target = self.streams.get(sid)
        if target is None:
            return
        stream = target
        stream.send_credit += increment
        if stream.send_credit > _MAX_WINDOW:
            stream.reset(p.ErrorCode.FLOW_CONTROL, "stream window above 2^31-1")
            return
        stream._wake_tx()

    def _on_open_frame(self, f: p.Frame) -> None:
        fin = bool(f.flags & p.FLAG_FIN)
        if self.opens_streams:
            mine = self.streams.get(f.stream_id)
            if mine is None:
                self._check_known(f.stream_id)
                return
            response = p.decode_response_head(f.payload)
            mine.has_body = not fin
            if mine._head is not None and not mine._head.done():
                mine._head.set_result(response)
            if fin:
                mine._on_data(b"", True)
            return
        sid = f.stream_id
        if sid <= self._last_peer_id:
            raise p.ProtocolError(f"OPEN reuses stream id {sid}")
        self._last_peer_id = sid
        try:
            head = p.decode_request_head(f.payload)
        except p.ProtocolError as exc:
            # One malformed head costs its own stream, not the whole tunnel.
            self._queue(p.encode_reset(sid, p.ErrorCode.BAD_REQUEST, exc.message))
            return
        if self.goaway_sent:
            self._queue(p.encode_reset(sid, p.ErrorCode.GOING_AWAY, "gateway is draining"))
            return
        if len(self.streams) >= self.local.max_streams:
            self._queue(p.encode_reset(sid, p.ErrorCode.TOO_MANY_STREAMS, f"limit {self.local.max_streams}"))
            return
        stream = Stream(self, sid, head)
        stream.has_body = not fin
        stream.rx_fin = fin
        self.streams[sid] = stream
        if self._on_open is not None:
            self._on_open(stream)

    def _on_goaway_frame(self, payload: bytes) -> None:
        last, code, message = p.decode_goaway(payload)
        self.goaway_received = (last, code, message)
        log.info("%s: peer sent GOAWAY (%s%s)", self.name, code, f": {message}" if message else "")
        if self.opens_streams:
            # Streams the peer never saw are refused so the caller may retry them elsewhere.
            for sid, stream in list(self.streams.items()):
                if sid > last:
                    stream._fail(StreamReset(p.ErrorCode.GOING_AWAY, "not processed before GOAWAY"))
        if self._on_goaway is not None:
            self._on_goaway(code, message)
        if not self.streams:
            self._drained.set()

    # --- credit ---------------------------------------------------------------------------------

    def _conn_consumed(self, n: int) -> None:
        if self.closed:
            return
        self._conn_unacked += n
        if self._conn_unacked >= self.local.initial_connection_window // 4:
            self.recv_window += self._conn_unacked
            self._queue(p.encode_window(0, self._conn_unacked))
            self._conn_unacked = 0

    def _forget(self, stream: Stream) -> None:
        if self.streams.pop(stream.id, None) is not None:
            self._credit_waiters.discard(stream)
            if not self.streams:
                self._drained.set()

    # --- heartbeat ------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.local.heartbeat_ms / 1000
        next_ping = self._loop.time()
        while not self.closed:
            now = self._loop.time()
            if now - self.last_rx > 2 * interval:
                log.warning("%s: no frame for %.1fs: link is dead", self.name, now - self.last_rx)
                self.close(p.ErrorCode.HEARTBEAT_TIMEOUT, f"no frame for {now - self.last_rx:.1f}s")
                return
            if now >= next_ping:
                self._queue(p.encode_ping(next(self._ping_ids)))
                next_ping = now + interval
            await asyncio.sleep(interval / 4)
            overshoot = self._loop.time() - now - interval / 4
            if overshoot > interval / 4:
                # Our own loop was stalled: frames may be waiting unread, so that time proves nothing.
                self.last_rx += overshoot


async def until_either(task: asyncio.Task[None], event: asyncio.Event) -> None:
    """Wait until `task` ends or `event` is set, whichever is first; `task` keeps running."""
    event_wait = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({task, event_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        event_wait.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await event_wait


async def end_connection(
    mux: Mux,
    close_ws: Callable[[], Awaitable[object]],
    receiver: asyncio.Task[None],
    reason: tuple[p.ErrorCode, str] | None,
) -> None:
    """The end of a tunnel connection, the same on both sides: stop the writer, close the
    WebSocket while the receiver still runs (so the close handshake completes; a link that died
    of a heartbeat timeout gets no time for it), then stop the receiver."""
    await mux.stop()
    dead = reason is not None and reason[0] is p.ErrorCode.HEARTBEAT_TIMEOUT
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close_ws(), 0.2 if dead else 2.0)
    receiver.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await receiver
