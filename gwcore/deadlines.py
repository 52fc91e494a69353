"""Per-request deadlines on one timer: asyncio.timeout's behaviour without a timer per request.

asyncio.timeout schedules a TimerHandle on entry, cancels it on exit and leaves it in the loop's
heap until the heap is cleaned; at the relay's request rate that cost ~9 µs a request, as much as
the JSON filter (docs/relay-performance.md, issue 14). Here a deadline is an entry in a dict, and
one sweep every TICK seconds, running only while some deadline is live, cancels the tasks whose
deadlines have passed. A deadline therefore fires up to TICK late, which is nothing next to the
relay's timeouts (0.5 s at the least a target can set, 60 s by default).

What the block sees is asyncio.timeout's: on expiry its task is cancelled, and the
CancelledError leaves the block as TimeoutError, unless the task was also cancelled from outside
(then the cancellation wins, as with asyncio.timeout: task.cancelling() and uncancel() keep count).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["TICK", "Deadline", "Deadlines"]

TICK = 0.05  # seconds between sweeps while any deadline is live


class Deadline:
    """One block's deadline (an async context manager); `reschedule` moves or removes it."""

    __slots__ = ("_cancelling", "_expired", "_owner", "_task", "when")

    def __init__(self, owner: Deadlines, when: float | None) -> None:
        self._owner = owner
        self.when = when  # loop time, or None: no deadline
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False

    def reschedule(self, when: float | None) -> None:
        """A new deadline in loop time (None: none); only inside the block, before it expires."""
        if self._task is None or self._expired:
            raise RuntimeError("deadline is not active")
        self.when = when

    def reschedule_in(self, seconds: float) -> None:
        """A new deadline `seconds` from now (the owner's loop clock, no loop lookup)."""
        loop = self._owner._loop
        assert loop is not None
        self.reschedule(loop.time() + seconds)

    def expired(self) -> bool:
        """Whether the deadline cancelled the block."""
        return self._expired

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task(self._owner._loop)
        if task is None:
            raise RuntimeError("a deadline needs a task")
        if self._task is not None:
            raise RuntimeError("a deadline is entered once")
        self._task = task
        self._cancelling = task.cancelling()
        self._owner._enter(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._owner._live.pop(self, None)
        # uncancel() only for our own cancel: it is what tells an outer cancel apart from ours.
        expired, task = self._expired, self._task
        if (
            expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _expire(self) -> None:
        self._expired = True
        assert self._task is not None
        self._task.cancel()


class Deadlines:
    """The deadlines of one event loop's requests, swept by one timer."""

    def __init__(self, tick: float = TICK) -> None:
        self.tick = tick
        self._live: dict[Deadline, None] = {}  # insertion-ordered set
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def after(self, seconds: float) -> Deadline:
        """A deadline `seconds` from now, for `async with`."""
        # The loop is looked up once: on Python 3.11 every get_running_loop() is a getpid() call.
        loop = self._loop
        if loop is None or not loop.is_running():  # first use, or another loop (tests run several)
            loop = self._loop = asyncio.get_running_loop()
            self._sweep_handle = None
        return Deadline(self, loop.time() + seconds)

    def _enter(self, deadline: Deadline) -> None:
        self._live[deadline] = None
        if self._sweep_handle is None:
            loop = self._loop
            assert loop is not None
            self._sweep_handle = loop.call_at(loop.time() + self.tick, self._sweep)

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        due = [d for d in self._live if d.when is not None and d.when <= now]
        for deadline in due:
            del self._live[deadline]
            deadline._expire()
        self._sweep_handle = loop.call_at(now + self.tick, self._sweep) if self._live else None

    def close(self) -> None:
        """Stop sweeping (blocks still open keep their deadlines unenforced)."""
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
