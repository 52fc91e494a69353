"""gwcore/deadlines.py behaves as asyncio.timeout does, with one sweeping timer instead of one each.

Every scenario runs on both, so the relay's switch from asyncio.timeout changes nothing a block
can see: what is raised, when the task is cancelled from outside too, and after reschedule.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from gwcore.deadlines import Deadline, Deadlines

pytestmark = pytest.mark.unit

TICK = 0.01


def _ours() -> Callable[[float], Any]:
    return Deadlines(tick=TICK).after


BOTH = pytest.mark.parametrize("after", [asyncio.timeout, "ours"], ids=["asyncio", "deadlines"])


def _pick(after: Any) -> Callable[[float], Any]:
    return _ours() if after == "ours" else after


@BOTH
async def test_an_expired_block_raises_timeout_error(after: Any) -> None:
    after = _pick(after)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with after(0.05) as deadline:
            await asyncio.sleep(5)
    assert 0.05 <= loop.time() - start < 1.0
    assert deadline.expired()


@BOTH
async def test_a_block_that_ends_in_time_is_left_alone(after: Any) -> None:
    after = _pick(after)
    async with after(1.0) as deadline:
        await asyncio.sleep(0.02)
    assert not deadline.expired()
    await asyncio.sleep(0.05)  # nothing fires later either
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


@BOTH
async def test_reschedule_moves_and_removes_the_deadline(after: Any) -> None:
    after = _pick(after)
    loop = asyncio.get_running_loop()
    async with after(0.03) as deadline:
        deadline.reschedule(None)
        await asyncio.sleep(0.08)
    with pytest.raises(TimeoutError):
        async with after(10) as deadline:
            deadline.reschedule(loop.time() + 0.03)
            await asyncio.sleep(5)


async def test_reschedule_in_counts_from_now() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with Deadlines(tick=TICK).after(0.02) as deadline:
            await asyncio.sleep(0.01)
            start = loop.time()
            deadline.reschedule_in(0.1)
            await asyncio.sleep(5)
    assert loop.time() - start >= 0.1  # the moved deadline, not the first one


async def _cancelled_from_outside(body: Callable[[], Any]) -> None:
    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@BOTH
async def test_a_cancel_from_outside_wins_over_the_deadline(after: Any) -> None:
    after = _pick(after)

    async def body() -> None:
        async with after(0.03):
            try:
                await asyncio.sleep(5)
            finally:
                await asyncio.sleep(0.1)  # the deadline passes while the outer cancel is pending

    await _cancelled_from_outside(body)


@BOTH
async def test_a_cancel_from_outside_stays_a_cancel(after: Any) -> None:
    after = _pick(after)

    async def body() -> None:
        async with after(10):
            await asyncio.sleep(5)

    await _cancelled_from_outside(body)


@BOTH
async def test_an_exception_inside_passes_through(after: Any) -> None:
    after = _pick(after)
    with pytest.raises(KeyError):
        async with after(10):
            raise KeyError("x")


async def test_only_the_due_deadlines_fire_and_the_sweep_stops_when_none_is_live() -> None:
    deadlines = Deadlines(tick=TICK)
    outcomes: dict[int, str] = {}

    async def one(i: int, seconds: float) -> None:
        try:
            async with deadlines.after(seconds):
                await asyncio.sleep(0.15)
            outcomes[i] = "done"
        except TimeoutError:
            outcomes[i] = "timeout"

    await asyncio.gather(*(one(i, 0.03 if i % 3 == 0 else 5) for i in range(30)))
    assert outcomes == {i: "timeout" if i % 3 == 0 else "done" for i in range(30)}
    await asyncio.sleep(3 * TICK)
    assert deadlines._sweep_handle is None and not deadlines._live


async def test_misuse_is_refused() -> None:
    deadline = Deadlines(tick=TICK).after(1)
    with pytest.raises(RuntimeError, match="not active"):
        deadline.reschedule(None)
    async with deadline:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with deadline:
            pass
    assert isinstance(deadline, Deadline)


async def test_close_stops_the_sweep() -> None:
    deadlines = Deadlines(tick=TICK)
    with contextlib.suppress(TimeoutError):
        async with deadlines.after(10):
            deadlines.close()
            await asyncio.sleep(0.05)
    assert deadlines._sweep_handle is None


def test_a_second_loop_gets_its_own_sweep() -> None:
    deadlines = Deadlines(tick=TICK)

    async def expires() -> bool:
        try:
            async with deadlines.after(0.02):
                await asyncio.sleep(1)
        except TimeoutError:
            return True
        return False

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(expires())
        assert second.run_until_complete(expires())  # the first loop is stopped, not closed
    finally:
        first.close()
        second.close()
