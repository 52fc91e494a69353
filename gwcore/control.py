"""Control messages over a tunnel connection (docs/protocol.md §13), the same on both ends.

A CONTROL frame carries one JSON object with a "type". A message with an "id" asks for an answer:
the peer replies with a message whose "re" is that id (or a message of type "error" with a
"code" and a "message"). Handlers are looked up in a table by type; an unknown type that asks for
an answer gets the error "unknown-type", one that does not is ignored, so either side can add
message types without breaking an older peer.

Both the gateway and the plane hold one ControlChannel for the life of the process and attach it
to each tunnel connection as it comes up; requests still waiting when a connection ends fail
with ControlError("disconnected").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable

from gwcore import protocol as p
from gwcore.errors import UserError
from gwcore.streams import Mux

log = logging.getLogger(__name__)

Message = dict[str, object]
Handler = Callable[[Message], Awaitable[Message | None]]

# Handlers of the peer's requests running at once; beyond this the peer gets "busy". A control
# message is cheap to send and may be expensive to serve (a CSR to sign, a bundle to build).
MAX_INFLIGHT = 8
DEFAULT_TIMEOUT = 30.0


class ControlError(UserError):
    """A request failed: the peer's error reply, a timeout, or the connection went away."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.detail = message


def _valid_id(value: object) -> bool:
    # JSON numbers beyond 2^53 are not exact everywhere; a string or huge id would also be echoed back.
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**53


def error_reply(request_id: object, code: str, message: str) -> Message:
    """The reply to a request that failed."""
    return {"type": "error", "re": request_id, "code": code, "message": message[:1024]}


class ControlChannel:
    """A table of handlers for the peer's messages, and requests of our own that await a reply."""

    def __init__(self, name: str, max_inflight: int = MAX_INFLIGHT) -> None:
        self.name = name
        self.max_inflight = max_inflight
        self._handlers: dict[str, Handler] = {}
        self._mux: Mux | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- wiring ---------------------------------------------------------------------------------

    def register(self, kind: str, handler: Handler) -> None:
        """Serve the peer's messages of `kind` with `handler` (its result, if any, is the reply)."""
        self._handlers[kind] = handler

    def attach(self, mux: Mux) -> None:
        """Use this connection from now on (the previous one, if any, is detached)."""
        if self._mux is not None and self._mux is not mux:
            self.detach(self._mux)
        self._mux = mux

    def detach(self, mux: Mux) -> None:
        """The connection ended: fail our waiting requests and stop serving its messages."""
        if self._mux is not mux:
            return
        self._mux = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ControlError("disconnected", "the tunnel connection ended"))
                future.exception()  # retrieved: the requester may have given up already
        for task in list(self._tasks):
            task.cancel()

    @property
    def ready(self) -> bool:
        """A connection is attached and its peer takes CONTROL messages."""
        mux = self._mux
        return mux is not None and not mux.closed and mux.control_ok

    async def close(self) -> None:
        """Detach and wait for the handlers still running."""
        if self._mux is not None:
            self.detach(self._mux)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- sending --------------------------------------------------------------------------------

    def send(self, message: Message) -> bool:
        """Send a message that asks for no answer; False when no capable connection is attached."""
        if not self.ready:
            return False
        assert self._mux is not None
        try:
            self._mux.send_control(message)
        except p.ProtocolError as exc:
            log.warning("%s: cannot send %s: %s", self.name, message.get("type"), exc.message)
            return False
        return True

    async def request(self, message: Message, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """Send a message and wait for its reply; ControlError on an error reply, timeout or disconnect."""
        if not self.ready:
            raise ControlError("unavailable", "no tunnel connection that takes control messages")
        assert self._mux is not None
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._mux.send_control({**message, "id": request_id})
        except p.ProtocolError as exc:
            self._pending.pop(request_id, None)
            raise ControlError("bad-request", exc.message) from None
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise ControlError("timeout", f"no reply to {message.get('type')} in {timeout:.0f}s") from None
        finally:
            self._pending.pop(request_id, None)

    # --- receiving (the Mux's on_control callback) ----------------------------------------------

    def on_message(self, message: Message) -> None:
        """Dispatch one message from the peer: a reply to one of ours, or a message to serve."""
        if "re" in message:
            self._on_reply(message)
            return
        kind = str(message["type"])
        request_id = message.get("id")
        if request_id is not None and not _valid_id(request_id):
            log.warning("%s: %s message with an invalid id dropped", self.name, kind)
            return
        handler = self._handlers.get(kind)
        if handler is None:
            if request_id is not None:
                self._reply(error_reply(request_id, "unknown-type", f"no handler for {kind!r}"))
            else:
                log.debug("%s: ignored %s message", self.name, kind)
            return
        if len(self._tasks) >= self.max_inflight:
            if request_id is not None:
                self._reply(error_reply(request_id, "busy", f"{len(self._tasks)} control requests running"))
            else:
                log.warning("%s: dropped %s message: %d handlers running", self.name, kind, len(self._tasks))
            return
        task = asyncio.create_task(self._serve(handler, message, request_id), name=f"control-{kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_reply(self, message: Message) -> None:
        request_id = message.get("re")
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            log.debug("%s: reply to unknown request %r dropped", self.name, request_id)
            return
        if message["type"] == "error":
            code, text = message.get("code"), message.get("message")
            future.set_exception(ControlError(str(code or "error"), str(text or "")))
        else:
            future.set_result(message)

    async def _serve(self, handler: Handler, message: Message, request_id: object) -> None:
        kind = message["type"]
        try:
            reply = await handler(message)
        except ControlError as exc:
            reply = error_reply(request_id, exc.code, exc.detail) if request_id is not None else None
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug in a handler must not end the tunnel; the peer learns only that it failed.
            log.exception("%s: handler for %s failed", self.name, kind)
            reply = error_reply(request_id, "internal", "") if request_id is not None else None
        if request_id is None or reply is None:
            return
        self._reply({**reply, "re": request_id})

    def _reply(self, message: Message) -> None:
        mux = self._mux
        if mux is None or mux.closed:
            return
        try:
            mux.send_control(message)
        except p.ProtocolError as exc:
            log.warning("%s: cannot reply to %s: %s", self.name, message.get("re"), exc.message)
            with contextlib.suppress(p.ProtocolError):
                mux.send_control(error_reply(message.get("re"), "internal", "reply too large"))
