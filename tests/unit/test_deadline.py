"""by_deadline answers at the deadline even when the work it waits for holds on to its
cancellation (as a redis-py call did with Redis paused), and keeps what it returns or raises."""

from __future__ import annotations

import asyncio
import gc

import pytest

from tollgate.engine.charging.engine import by_deadline


async def _stubborn(finished: asyncio.Event) -> str:
    """Ignores the first cancellation and runs on for another 0.3 s."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(0.3)
    finished.set()
    raise RuntimeError("late failure, nobody waits for it")


async def test_the_deadline_holds_when_the_work_ignores_its_cancellation() -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    finished = asyncio.Event()
    start = loop.time()
    with pytest.raises(TimeoutError):
        await by_deadline(start + 0.05, _stubborn(finished))
    assert loop.time() - start < 0.2
    assert not finished.is_set()  # it was still running when the caller got its answer
    await asyncio.wait_for(finished.wait(), 2)
    await asyncio.sleep(0)
    gc.collect()  # a task whose exception nobody retrieved reports it when collected
    assert unhandled == []


async def test_results_and_errors_pass_through() -> None:
    loop = asyncio.get_running_loop()

    async def ok() -> int:
        await asyncio.sleep(0)
        return 7

    async def bad() -> int:
        raise ValueError("from the work")

    assert await by_deadline(loop.time() + 1, ok()) == 7
    with pytest.raises(ValueError, match="from the work"):
        await by_deadline(loop.time() + 1, bad())


async def test_work_that_needs_no_wait_finishes_at_a_deadline_just_ahead() -> None:
    async def cached() -> str:
        return "done"

    loop = asyncio.get_running_loop()
    assert await by_deadline(loop.time() + 0.001, cached()) == "done"
