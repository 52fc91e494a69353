"""One stream of a tunnel connection: the half each side writes and the half it reads, with its credit.

The Mux (gwcore.streams) owns the connection, its window, the batching writer and the heartbeat;
a Stream is what a relay handler holds. Split from gwcore.streams to keep each module to one job.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from gwcore import protocol as p
from gwcore.errors import UserError


class MuxPort(Protocol):
    """What a Stream needs of its connection; gwcore.streams.Mux is the one implementation."""

    peer: p.Limits
    local: p.Limits
    send_credit: int
    out_high: int
    _loop: asyncio.AbstractEventLoop
    _out_size: int
    _writable: asyncio.Event
    _credit_waiters: set[Stream]

    def _queue(self, frame: bytes) -> None: ...
    def _queue_data(self, sid: int, data: memoryview, fin: bool) -> None: ...
    def _conn_consumed(self, n: int) -> None: ...
    def _check_head_size(self, frame: bytes) -> None: ...
    def _forget(self, stream: Stream) -> None: ...


class StreamReset(UserError):
    """The stream was aborted (by the peer, by us, or because the connection went away)."""

    def __init__(self, code: p.ErrorCode, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else str(code))
        self.code = code
        self.detail = message


class Stream:
    """One request/response exchange; each side has a half it writes and a half it reads.

    Two facts about the half we read, never to be confused: `has_body` says whether the peer's
    message has a body at all (its OPEN came without FIN), fixed when the head arrives;
    `rx_fin` says whether the peer has finished sending, which may already be true when the
    handler first sees the stream (OPEN and DATA+FIN in one message) while the body's bytes
    still wait, buffered, for read().
    """

    __slots__ = (
        "_error",
        "_head",
        "_inbox",
        "_rx_waiter",
        "_tx_waiter",
        "_unacked",
        "has_body",
        "id",
        "mux",
        "on_abort",
        "recv_window",
        "request",
        "rx_fin",
        "send_credit",
        "tx_fin",
    )

    def __init__(self, mux: MuxPort, stream_id: int, request: p.RequestHead | None = None) -> None:
        self.mux = mux
        self.id = stream_id
        self.request = request
        self.send_credit = mux.peer.initial_stream_window
        self.recv_window = mux.local.initial_stream_window
        self.has_body = False  # the peer's head came without FIN (plane side: set with the response)
        self.rx_fin = False  # the peer has finished sending (its body may still be buffered)
        self.tx_fin = False
        self._inbox: deque[bytes] = deque()
        # One reader and one writer at most wait on a stream; their futures are made only when one
        # waits (most small exchanges never do), and set by _wake_rx / _wake_tx.
        self._rx_waiter: asyncio.Future[None] | None = None
        self._tx_waiter: asyncio.Future[None] | None = None
        self._unacked = 0
        self._error: StreamReset | None = None
        self._head: asyncio.Future[p.ResponseHead] | None = None
        # Called when the peer or the connection aborts the stream (not on our own reset()).
        self.on_abort: Callable[[], object] | None = None

    # --- reading --------------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The next chunk of the peer's body; b"" once it has ended; StreamReset if aborted."""
        while not self._inbox:
            if self._error is not None:
                raise self._error
            if self.rx_fin:
                return b""
            self._rx_waiter = waiter = self.mux._loop.create_future()
            try:
                await waiter
            finally:
                self._rx_waiter = None
        inbox = self._inbox
        if len(inbox) == 1:
            chunk = inbox.popleft()
        else:
            # Hand over everything buffered at once: one write downstream instead of one per frame.
            chunk = b"".join(inbox)
            inbox.clear()
        self._consumed(len(chunk))
        return chunk

    def read_nowait(self) -> bytes:
        """Whatever body bytes are buffered now (b"" if none), without waiting; read() says when
        the body has ended. Lets a response's head go out with its first bytes in one write."""
        inbox = self._inbox
        if not inbox or self._error is not None:
            return b""
        chunk = inbox.popleft() if len(inbox) == 1 else b"".join(inbox)
        inbox.clear()
        self._consumed(len(chunk))
        return chunk

    def read_complete(self) -> bytes | None:
        """The whole rest of the body if the peer has already ended it (so it is all buffered), else
        None. Lets a small response go out in one write instead of a head and a body."""
        if not self.rx_fin or self._error is not None:
            return None
        inbox = self._inbox
        if not inbox:
            return b""
        body = inbox.popleft() if len(inbox) == 1 else b"".join(inbox)
        inbox.clear()
        self._consumed(len(body))
        return body

    def _consumed(self, n: int) -> None:
        mux = self.mux
        if not self.rx_fin and self._error is None:
            self._unacked += n
            if self._unacked >= mux.local.initial_stream_window // 4:
                self.recv_window += self._unacked
                mux._queue(p.encode_window(self.id, self._unacked))
                self._unacked = 0
        mux._conn_consumed(n)

    async def response(self) -> p.ResponseHead:
        """Wait for the response head (plane side)."""
        assert self._head is not None
        return await self._head

    # --- writing --------------------------------------------------------------------------------

    def send_head(self, head: p.ResponseHead, fin: bool = False) -> None:
        """Send the response head (gateway side); ProtocolError if it exceeds the peer's limits."""
        self._check_writable()
        frame = p.encode_response_head(self.id, head, fin)
        self.mux._check_head_size(frame)
        self.mux._queue(frame)
        if fin:
            self._tx_done()

    async def write(self, data: bytes, fin: bool = False) -> None:
        """Send body bytes, waiting for flow-control credit; StreamReset if aborted."""
        self._check_writable()
        mux = self.mux
        view = memoryview(data)
        pos, total = 0, len(data)
        while pos < total:
            if mux._out_size > mux.out_high:
                await mux._writable.wait()
                self._check_writable()
                continue
            n = min(total - pos, self.send_credit, mux.send_credit, mux.peer.max_frame_size)
            if n <= 0:
                await self._wait_credit()
                continue
            self.send_credit -= n
            mux.send_credit -= n
            last = fin and pos + n == total
            mux._queue_data(self.id, view[pos : pos + n], last)
            pos += n
        if fin:
            if total == 0:
                mux._queue(p.encode_end(self.id))
            self._tx_done()

    def end(self) -> None:
        """Finish our half of the stream."""
        if self.tx_fin or self._error is not None:
            return
        self.mux._queue(p.encode_end(self.id))
        self._tx_done()

    def reset(self, code: p.ErrorCode, message: str = "") -> None:
        """Abort the stream in both directions (no-op if it is already closed)."""
        if self._error is not None or (self.tx_fin and self.rx_fin):
            return
        self.mux._queue(p.encode_reset(self.id, code, message))
        self.on_abort = None
        self._fail(StreamReset(code, message))

    @property
    def closed(self) -> bool:
        """True when the stream is finished or aborted."""
        return self._error is not None or (self.tx_fin and self.rx_fin)

    async def _wait_credit(self) -> None:
        self._check_writable()
        mux = self.mux
        if mux.send_credit <= 0:
            mux._credit_waiters.add(self)
        self._tx_waiter = waiter = mux._loop.create_future()
        try:
            await waiter
        finally:
            self._tx_waiter = None
        self._check_writable()

    def _wake_rx(self) -> None:
        waiter = self._rx_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_tx(self) -> None:
        waiter = self._tx_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_writable(self) -> None:
        if self._error is not None:
            raise self._error
        if self.tx_fin:
            raise StreamReset(p.ErrorCode.INTERNAL, "write after end of stream")

    def _tx_done(self) -> None:
        self.tx_fin = True
        if self.rx_fin:
            self.mux._forget(self)

    # --- driven by the Mux ----------------------------------------------------------------------

    def _fail(self, error: StreamReset) -> None:
        if self._error is not None:
            return
        self._error = error
        buffered = sum(len(c) for c in self._inbox)
        self._inbox.clear()
        if buffered:
            self.mux._conn_consumed(buffered)
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # mark retrieved: nobody may be waiting any more
        self._wake_rx()
        self._wake_tx()
        self.mux._forget(self)
        if self.on_abort is not None:
            callback, self.on_abort = self.on_abort, None
            callback()

    def _on_data(self, payload: bytes, fin: bool) -> None:
        if payload:
            self._inbox.append(payload)
        if fin:
            self.rx_fin = True
        self._wake_rx()
        if fin and self.tx_fin:
            self.mux._forget(self)
