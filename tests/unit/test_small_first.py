"""SmallFirst: bulk work waits while a unary call is in the engine, at most max_wait_s."""

from __future__ import annotations

import asyncio
import itertools

from tollgate.engine.charging.flow import SmallFirst


async def test_bulk_work_goes_at_once_while_no_unary_call_is_in_the_engine() -> None:
    gate = SmallFirst(max_wait_s=5.0)
    await asyncio.wait_for(gate.bulk_turn(), 0.1)
    gate.begin()
    gate.end()
    await asyncio.wait_for(gate.bulk_turn(), 0.1)


async def test_bulk_work_waits_until_the_last_unary_call_is_answered() -> None:
    gate = SmallFirst(max_wait_s=5.0)
    gate.begin()
    gate.begin()
    waiting = asyncio.create_task(gate.bulk_turn())
    await asyncio.sleep(0.01)
    gate.end()
    await asyncio.sleep(0.01)
    assert not waiting.done()  # one call is still in the engine
    gate.end()
    await asyncio.wait_for(waiting, 0.1)


async def test_steady_unary_calls_hold_bulk_work_back_for_max_wait_s_only() -> None:
    gate = SmallFirst(max_wait_s=0.05)
    gate.begin()  # never answered
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(gate.bulk_turn(), 1)
    assert 0.04 <= loop.time() - started < 0.5


async def test_bulk_steps_go_one_per_turn_of_the_event_loop() -> None:
    # Each turn then holds one bulk step at most: a new call's turns (in gRPC, before the
    # engine knows of it) wait for one step, not for every stream's.
    gate = SmallFirst(max_wait_s=5.0)
    order: list[str] = []

    async def step(name: str) -> None:
        await gate.bulk_turn()
        order.append(name)

    async def other_work() -> None:
        for k in range(6):
            order.append(f"turn {k}")
            await asyncio.sleep(0)

    await asyncio.gather(step("a"), step("b"), step("c"), other_work())
    steps = [order.index(s) for s in ("a", "b", "c")]
    assert all(any(x.startswith("turn") for x in order[i + 1:j])
               for i, j in itertools.pairwise(steps))
