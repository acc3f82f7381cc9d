"""The batcher's two steps: the next batch is prepared while finishes are in flight (two at a
time in the bulk lane; one in the small calls' lane, and there only when a full batch waits),
what comes back runs first, oldest first; small calls in a lane of their own beside the bulk
one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tollgate.engine.charging.batcher import BULK_FLIGHTS, GATHER_QUIET_TURNS, Batcher, Prepared
from tollgate.engine.errors import Overloaded


async def test_the_bulk_lane_prepares_while_two_finishes_are_in_flight() -> None:
    log: list[str] = []
    release = asyncio.Event()
    in_flight = most = 0

    async def prepare(batch: list[int], bulk: bool) -> Prepared[int]:
        log.append(f"prepare {batch}")

        async def finish() -> list[int]:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            log.append(f"finish {batch} starts")
            await release.wait()
            log.append(f"finish {batch} ends")
            in_flight -= 1
            return []
        return Prepared(batch, finish)

    batcher: Batcher[int] = Batcher(prepare, lambda items, e: None, max_batch=2, window_s=0,
                                    max_queue=100)
    batcher.start()
    batcher.submit([1, 2, 3, 4, 5, 6])
    while "prepare [5, 6]" not in log:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    # [3, 4] is applied beside [1, 2]; [5, 6], prepared meanwhile, waits for [1, 2] to land.
    assert set(log) == {"prepare [1, 2]", "finish [1, 2] starts", "prepare [3, 4]",
                        "finish [3, 4] starts", "prepare [5, 6]"}
    release.set()
    await batcher.close()
    assert log.index("finish [5, 6] starts") > log.index("finish [1, 2] ends")
    assert most == BULK_FLIGHTS == 2  # never more storage steps at once
    assert (batcher.batches, batcher.items) == (3, 6)


async def test_a_call_that_comes_while_the_bulk_lane_waits_on_a_landing_is_prepared_at_once(
        ) -> None:
    log: list[str] = []
    land = asyncio.Event()

    async def prepare(batch: list[int], bulk: bool) -> Prepared[int]:
        log.append(f"prepare {batch}")

        async def finish() -> list[int]:
            await land.wait()
            log.append(f"landed {batch}")
            return []
        return Prepared(batch, finish)

    batcher: Batcher[int] = Batcher(prepare, lambda items, e: None, max_batch=10, window_s=0,
                                    max_queue=100)
    batcher.start()
    batcher.submit([1, 2])
    while "prepare [1, 2]" not in log:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.005)  # the queue empty: the lane waits on the batch in flight
    batcher.submit([3, 4])
    await asyncio.sleep(0.005)
    # Prepared beside [1, 2], which has not landed: it did not wait for the landing.
    assert log == ["prepare [1, 2]", "prepare [3, 4]"]
    land.set()
    await batcher.close()
    assert sorted(log[2:]) == ["landed [1, 2]", "landed [3, 4]"]


async def test_the_next_batch_is_prepared_once_the_writes_before_it_are_sent() -> None:
    log: list[str] = []

    async def prepare(batch: list[int], bulk: bool) -> Prepared[int]:
        log.append(f"prepare {batch}")
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def finish() -> list[int]:
            for _ in range(3):  # its steps up to the send, each a turn of the event loop
                await asyncio.sleep(0)
            log.append(f"sent {batch}")
            sent.set_result(None)
            await asyncio.sleep(0.005)
            return []
        return Prepared(batch, finish, sent=sent)

    batcher: Batcher[int] = Batcher(prepare, lambda items, e: None, max_batch=2, window_s=0,
                                    max_queue=100)
    batcher.start()
    batcher.submit([1, 2, 3, 4, 5, 6])
    await batcher.close()
    assert log == ["prepare [1, 2]", "sent [1, 2]", "prepare [3, 4]", "sent [3, 4]",
                   "prepare [5, 6]", "sent [5, 6]"]


async def test_the_small_calls_lane_waits_for_its_landing_not_for_the_send() -> None:
    prepared: list[list[str]] = []
    land = asyncio.Event()

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        prepared.append(batch)
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def finish() -> list[str]:
            await land.wait()  # sent only as it lands
            return []
        return Prepared(batch, finish, sent=sent)

    batcher: Batcher[str] = Batcher(prepare, lambda items, e: None, max_batch=100,
                                    window_s=0, max_queue=1000, shared_batch=800)
    batcher.start()
    batcher.submit(["u0"])
    await _until(lambda: prepared == [["u0"]])
    for _ in range(5):
        await asyncio.sleep(0)
    # Waiting on the landing, not preparing: the engine reads the unary calls that come
    # meanwhile as they come (waiting for the send too held them back: 0.77x the calls/s).
    assert not batcher.preparing
    land.set()
    await batcher.close()


async def test_a_finish_that_fails_before_its_send_does_not_hold_the_lane() -> None:
    seen: list[list[int]] = []
    failed: list[list[int]] = []

    async def prepare(batch: list[int], bulk: bool) -> Prepared[int]:
        seen.append(batch)
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def finish() -> list[int]:
            if batch == [1, 2]:
                raise ConnectionError("storage unreachable")
            sent.set_result(None)
            return []
        return Prepared(batch, finish, sent=sent)

    batcher: Batcher[int] = Batcher(prepare, lambda items, e: failed.append(items),
                                    max_batch=2, window_s=0, max_queue=100)
    batcher.start()
    batcher.submit([1, 2, 3, 4])
    await asyncio.wait_for(batcher.close(), 1)
    assert (seen, failed) == ([[1, 2], [3, 4]], [[1, 2]])


async def _through(prepare: Callable[[list[str], bool], Awaitable[Prepared[str]]],
                   items: list[str]) -> None:
    """Runs items through a batcher of batches of two until all are done."""
    batcher: Batcher[str] = Batcher(prepare, lambda items, e: None, max_batch=2, window_s=0,
                                    max_queue=100)
    batcher.start()
    batcher.submit(items)
    await batcher.close()


async def test_reruns_come_back_first_then_what_waited_then_the_queue() -> None:
    seen: list[list[str]] = []

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        seen.append(batch)
        if batch == ["a", "b"]:
            async def finish_ab() -> list[str]:
                await asyncio.sleep(0.01)
                return ["a"]  # a's account moved: run it again
            return Prepared(["a", "b"], finish_ab)
        if batch == ["c", "d"]:
            # Their accounts are in the batch being applied: they wait, unrun, and the lane
            # waits for that batch to land.
            return Prepared([], later=["c", "d"])

        async def finish_rest() -> list[str]:
            return []
        return Prepared(batch, finish_rest)

    await _through(prepare, ["a", "b", "c", "d", "e", "f"])
    # The re-run of a (older) goes before c and d, which waited, and all before e and f.
    assert seen == [["a", "b"], ["c", "d"], ["a", "c"], ["d", "e"], ["f"]]


async def test_reruns_of_batches_landing_together_come_back_oldest_first() -> None:
    seen: list[list[str]] = []

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        seen.append(batch)
        first = len(seen) <= 2
        wait, again = {"a": (0.02, ["a"]), "c": (0.005, ["c"])}.get(batch[0], (0.0, []))

        async def finish() -> list[str]:
            await asyncio.sleep(wait)
            return again if first else []  # a's and c's accounts moved, once
        return Prepared(batch, finish)

    await _through(prepare, ["a", "b", "c", "d", "e", "f"])
    # [c, d] lands first but is the newer: a's re-run goes before c's.
    assert seen[:3] == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert seen[3] == ["a", "c"]


async def test_a_failed_finish_fails_only_its_own_batch() -> None:
    failed: list[list[int]] = []

    async def prepare(batch: list[int], bulk: bool) -> Prepared[int]:
        async def finish() -> list[int]:
            if batch == [1]:
                raise ConnectionError("storage gone")
            return []
        return Prepared(batch, finish)

    batcher: Batcher[int] = Batcher(prepare, lambda items, e: failed.append(items), max_batch=1,
                                    window_s=0, max_queue=100)
    batcher.start()
    batcher.submit([1, 2])
    await batcher.close()
    assert failed == [[1]]
    assert (batcher.batches, batcher.items) == (1, 1)


def _recording(window_s: float) -> tuple[list[tuple[list[int], float]], Batcher[int]]:
    """A batcher (batches of 4; a call of one item is a small call) that records each batch
    and when it was prepared (event-loop time)."""
    batches: list[tuple[list[int], float]] = []

    async def prepare(batch: list[int], bulk: bool) -> Prepared[int]:
        batches.append((batch, asyncio.get_running_loop().time()))
        return Prepared(batch)

    return batches, Batcher(prepare, lambda items, e: None, max_batch=4, window_s=window_s,
                            max_queue=100, shared_batch=8)


async def test_an_idle_batcher_waits_its_window_for_more_then_runs_what_came() -> None:
    batches, batcher = _recording(0.05)
    batcher.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for n in range(3):  # one per event-loop turn, as unary calls come
        batcher.submit([n])
        await asyncio.sleep(0)
    while not batches:
        await asyncio.sleep(0.005)
    await batcher.close()
    assert [b for b, _ in batches] == [[0, 1, 2]]  # one batch, though not full
    assert batches[0][1] - t0 >= 0.045  # ... after the window


async def test_a_batch_that_fills_in_the_window_runs_at_once() -> None:
    batches, batcher = _recording(5.0)
    batcher.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    batcher.submit([1])
    await asyncio.sleep(0.005)  # the window has started
    for n in (2, 3, 4, 5):
        batcher.submit([n])
    while not batches:
        await asyncio.sleep(0.001)
    assert batches[0][0] == [1, 2, 3, 4]
    assert batches[0][1] - t0 < 2.5  # well before the window ends
    await batcher.close()
    assert [b for b, _ in batches] == [[1, 2, 3, 4], [5]]


async def test_items_submitted_each_are_small_calls_as_if_submitted_one_by_one() -> None:
    # The unary calls read together are queued in one step (Batcher.submit_each).
    runs = []
    for submit in ("one by one", "each"):
        batches, batcher = _recording(5.0)
        batcher.start()
        if submit == "each":
            batcher.submit_each([1, 2, 3, 4, 5])
        else:
            for n in (1, 2, 3, 4, 5):
                batcher.submit([n])
        while not batches:
            await asyncio.sleep(0.001)
        await batcher.close()  # the rest runs now, without the window
        runs.append([b for b, _ in batches])
    assert runs[0] == runs[1] == [[1, 2, 3, 4], [5]]  # a full batch at once, then the rest
    _, full = _recording(0)
    full.max_queue = 3
    with pytest.raises(Overloaded, match="max_queue 3"):
        full.submit_each([1, 2, 3, 4])
    assert full.queued == 0  # none of them


async def test_a_larger_call_at_an_idle_batcher_runs_without_the_window() -> None:
    batches, batcher = _recording(5.0)
    batcher.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    batcher.submit([1, 2, 3])  # more than a small call: the bulk lane's
    while not batches:
        await asyncio.sleep(0.001)
    assert batches[0][0] == [1, 2, 3]  # not full, yet not held for the window
    assert batches[0][1] - t0 < 2.5
    await batcher.close()


def _taking(max_batch: int, shared_batch: int = 0) -> tuple[list[list[str]], Batcher[str]]:
    """A batcher that records the batches it takes (nothing to apply)."""
    batches: list[list[str]] = []

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        batches.append(batch)
        return Prepared(batch)

    return batches, Batcher(prepare, lambda items, e: None, max_batch=max_batch, window_s=0,
                            max_queue=1000, shared_batch=shared_batch)


async def test_a_flooding_source_does_not_queue_ahead_of_a_call_that_comes_later() -> None:
    batches, batcher = _taking(4)
    stream = object()
    batcher.submit([f"s{n}" for n in range(100)], stream)  # a stream far ahead of its reader
    batcher.submit(["u0"])  # a unary call, after it
    batcher.submit([f"s{n}" for n in range(100, 110)], stream)
    batcher.start()
    await batcher.close()

    # Turns of at most max_batch each: the call's request is in the second batch (after one
    # turn of the stream), not the 27th, and the stream's requests keep their order.
    assert batches[:2] == [["s0", "s1", "s2", "s3"], ["u0", "s4", "s5", "s6"]]
    stream_order = [x for b in batches for x in b if x.startswith("s")]
    assert stream_order == [f"s{n}" for n in range(110)]
    assert (batcher.queued, sum(map(len, batches))) == (0, 111)


async def test_calls_are_taken_whole_in_turn_so_the_first_is_answered_first() -> None:
    batches, batcher = _taking(8)
    for c in "abcd":  # four calls of six requests, as a closed-loop client keeps in flight
        batcher.submit([f"{c}{n}" for n in range(6)])
    batcher.submit([f"e{n}" for n in range(10)])  # a call larger than a batch
    batcher.submit(["f0", "f1"])
    batcher.start()
    await batcher.close()

    # Equal shares would spread every call over every batch, and none would be answered
    # before the last batch (its client idle until then); in turn, call a is answered after
    # the first batch, and its client sends its next call while the others run. A call is
    # not split to fill a batch either: it would be answered only with the batch after. One
    # larger than a batch is split, from a batch's start, its turn a batch (then the others
    # go first), and what fits whole joins it.
    assert batches == [[f"a{n}" for n in range(6)], [f"b{n}" for n in range(6)],
                       [f"c{n}" for n in range(6)], [f"d{n}" for n in range(6)],
                       [f"e{n}" for n in range(8)], ["f0", "f1", "e8", "e9"]]


async def test_what_runs_again_rides_beside_a_whole_call_up_to_an_eighth_of_a_batch() -> None:
    """Requests that waited for the batch in flight (their accounts were in it) come back
    first; up to an eighth of a batch of them goes beside the next call taken whole, not as a
    batch of their own (a batch's fixed cost for a few requests) with the call after."""
    seen: list[list[str]] = []

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        seen.append(batch)
        if len(seen) == 1:  # two of the first call's requests wait for a batch in flight
            return Prepared(batch[:-2], later=batch[-2:])
        return Prepared(batch)

    batcher: Batcher[str] = Batcher(prepare, lambda items, e: None, max_batch=16,
                                    window_s=0, max_queue=100)
    for c, n in (("a", 16), ("b", 16), ("c", 16)):
        batcher.submit([f"{c}{i}" for i in range(n)])
    batcher.start()
    await batcher.close()
    assert seen[1] == ["a14", "a15", *[f"b{i}" for i in range(16)]]  # 18: 16 and 2 again
    assert seen[2] == [f"c{i}" for i in range(16)]


async def test_new_items_ride_beside_what_runs_again_only_once_all_of_it_is_taken() -> None:
    """More waits than a batch holds: the rest of it goes first in the next batch, and no new
    item before it (a stream's later request of a session run before its earlier one was
    refused: the session had moved on)."""
    ran: list[str] = []
    prepares = 0

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        nonlocal prepares
        prepares += 1
        if prepares <= 2:  # their accounts are in a batch elsewhere: all of them wait
            return Prepared([], later=batch)
        ran.extend(batch)

        async def finish() -> list[str]:
            return []
        return Prepared(batch, finish)

    batcher: Batcher[str] = Batcher(prepare, lambda items, e: None, max_batch=16,
                                    window_s=0, max_queue=100)
    stream = object()
    batcher.submit([f"s{i:02}" for i in range(40)], stream)
    batcher.start()
    await batcher.close()
    assert ran == [f"s{i:02}" for i in range(40)]  # a source keeps its own order


async def test_sources_with_more_than_a_batch_queued_take_turns_of_a_batch() -> None:
    batches, batcher = _taking(4)
    first, second = object(), object()  # two streams, each far ahead of its reader
    batcher.submit([f"x{n}" for n in range(10)], first)
    batcher.submit([f"y{n}" for n in range(6)], second)
    batcher.start()
    await batcher.close()

    # Neither can hold the batcher: a turn is one batch's worth, then the other's turn.
    assert batches == [["x0", "x1", "x2", "x3"], ["y0", "y1", "y2", "y3"],
                       ["x4", "x5", "x6", "x7"], ["y4", "y5", "x8", "x9"]]


def _sizes() -> tuple[list[list[str]], Batcher[str]]:
    """A batcher of batches of 16, 8 while small calls (of 1) come, recording its batches."""
    return _taking(16, shared_batch=8)


async def test_batches_are_small_while_small_calls_come_beside_a_stream() -> None:
    batches, batcher = _sizes()
    stream = object()
    batcher.submit([f"s{n}" for n in range(40)], stream)
    batcher.submit(["u0"])  # a unary call
    batcher.start()
    await batcher.close()

    # The call's batch is its own (it waits for no share of the stream's CPU), and every
    # batch is small: the caller's next call must not find a full-size batch being prepared.
    assert batches[0] == ["u0"]
    assert [len(b) for b in batches] == [1, 8, 8, 8, 8, 8]


async def test_a_small_call_is_prepared_and_applied_while_a_bulk_batch_holds_its_lane() -> None:
    log: list[str] = []
    bulk_prepared, bulk_applied = asyncio.Event(), asyncio.Event()

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        log.append(f"prepare {batch}")
        if batch[0].startswith("s"):
            await bulk_prepared.wait()  # a bulk batch's preparation, between its steps

        async def finish() -> list[str]:
            if batch[0].startswith("s"):
                await bulk_applied.wait()
            log.append(f"applied {batch}")
            return []
        return Prepared(batch, finish)

    batcher: Batcher[str] = Batcher(prepare, lambda items, e: None, max_batch=4, window_s=0,
                                    max_queue=100, shared_batch=8)
    batcher.start()
    batcher.submit([f"s{n}" for n in range(6)], object())  # a stream
    await asyncio.sleep(0.01)
    batcher.submit(["u0"])  # a unary call, while the stream's batch is being prepared
    while "applied ['u0']" not in log:
        await asyncio.sleep(0.001)
    bulk_prepared.set()
    await asyncio.sleep(0.01)
    batcher.submit(["u1"])  # ... and while its apply is in flight
    while "applied ['u1']" not in log:
        await asyncio.sleep(0.001)
    assert not any(line.startswith("applied ['s") for line in log)
    bulk_applied.set()
    await batcher.close()
    assert [line for line in log if line.startswith("applied ['s")] == [
        "applied ['s0', 's1', 's2', 's3']", "applied ['s4', 's5']"]
    assert (batcher.batches, batcher.items) == (4, 8)


def _held_finish() -> tuple[list[str], asyncio.Event, dict[str, asyncio.Event],
                            Batcher[str]]:
    """A batcher (small calls of one item, 3 to a batch) whose first preparation waits for
    `go`, and whose finishes each wait for their own event (keyed by the batch's first
    item); the log has each preparation and landing."""
    log: list[str] = []
    go = asyncio.Event()
    lands: dict[str, asyncio.Event] = {}

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        log.append(f"prepare {batch}")
        lands[batch[0]] = asyncio.Event()
        await go.wait()

        async def finish() -> list[str]:
            await lands[batch[0]].wait()
            log.append(f"landed {batch}")
            return []
        return Prepared(batch, finish)

    batcher: Batcher[str] = Batcher(prepare, lambda items, e: None, max_batch=3, window_s=0,
                                    max_queue=100, shared_batch=24)
    batcher.start()
    return log, go, lands, batcher


async def _until(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), 5)


async def test_small_calls_that_come_while_a_batch_is_prepared_wait_for_its_apply() -> None:
    log, go, lands, batcher = _held_finish()
    batcher.submit(["u0"])
    await _until(lambda: "u0" in lands)
    for call in ("u1", "u2"):  # unary calls while u0's batch is prepared
        batcher.submit([call])
    go.set()
    await asyncio.sleep(0.01)
    batcher.submit(["u3"])  # ... and while it is applied
    await asyncio.sleep(0.01)
    # Not prepared beside u0's apply: they wait for it to land, and go together.
    assert log == ["prepare ['u0']"]
    lands["u0"].set()
    await _until(lambda: "u1" in lands)
    lands["u1"].set()
    await batcher.close()
    assert log == ["prepare ['u0']", "landed ['u0']", "prepare ['u1', 'u2', 'u3']",
                   "landed ['u1', 'u2', 'u3']"]


async def test_a_full_batch_of_small_calls_is_prepared_while_the_one_before_is_applied() -> None:
    log, go, lands, batcher = _held_finish()
    batcher.submit(["u0"])
    await _until(lambda: "u0" in lands)
    for call in ("u1", "u2", "u3"):  # a full batch while u0's is prepared
        batcher.submit([call])
    go.set()
    await _until(lambda: "u1" in lands)
    assert log == ["prepare ['u0']", "prepare ['u1', 'u2', 'u3']"]
    lands["u0"].set()
    lands["u1"].set()
    await batcher.close()
    assert log[2:] == ["landed ['u0']", "landed ['u1', 'u2', 'u3']"]


def _landing_on_cue(collect: Callable[[], None] | None = None,
                    held: Callable[[], int] | None = None
                    ) -> tuple[list[list[str]], asyncio.Event, Batcher[str]]:
    """A batcher whose batches are recorded as prepared and land once `land` is set
    (`collect`, `held`: as the engine's, which holds unary calls back)."""
    batches: list[list[str]] = []
    land = asyncio.Event()

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        batches.append(list(batch))

        async def finish() -> list[str]:
            await land.wait()
            return []
        return Prepared(batch, finish)

    batcher: Batcher[str] = Batcher(prepare, lambda items, e: None, max_batch=100,
                                    window_s=0, max_queue=1000, shared_batch=800,
                                    collect=collect, held=held)
    batcher.start()
    return batches, land, batcher


async def _one_per_turn(batcher: Batcher[str], calls: list[str], gap: int = 1) -> None:
    """Submits one call every `gap` event-loop turns, as gRPC hands unary calls over."""
    for call in calls:
        for _ in range(gap):
            await asyncio.sleep(0)
        batcher.submit([call])


async def test_small_calls_still_coming_after_a_landing_join_the_next_batch() -> None:
    batches, land, batcher = _landing_on_cue()
    batcher.submit(["u0"])
    await _until(lambda: len(batches) == 1)
    batcher.submit(["u1"])  # waits for u0's landing
    land.set()
    await _one_per_turn(batcher, ["u2", "u3", "u4", "u5"])
    await _until(lambda: sum(map(len, batches)) == 6)
    await batcher.close()
    assert batches == [["u0"], ["u1", "u2", "u3", "u4", "u5"]]


async def test_calls_held_back_while_the_lane_gathers_are_read_together() -> None:
    # As the engine holds unary calls: the batcher counts them as coming (`held`) and
    # collects them once when it takes the batch, not a few in every turn (each collection
    # is a parse and a check of its calls).
    held: list[str] = []
    collected: list[list[str]] = []

    def collect() -> None:
        if held:
            collected.append(held[:])
            for call in held:
                batcher.submit([call])
            held.clear()

    batches, land, batcher = _landing_on_cue(collect, lambda: len(held))
    batcher.submit(["u0"])
    await _until(lambda: len(batches) == 1)
    held.append("u1")  # came during u0's apply
    land.set()
    for call in ("u2", "u3", "u4", "u5"):
        await asyncio.sleep(0)
        held.append(call)
    await _until(lambda: sum(map(len, batches)) == 6)
    await batcher.close()
    assert batches == [["u0"], ["u1", "u2", "u3", "u4", "u5"]]
    assert len(collected) <= 2  # at the landing, and once gathered


async def test_a_batch_is_taken_once_the_calls_stop_coming() -> None:
    batches, land, batcher = _landing_on_cue()
    batcher.submit(["u0"])
    await _until(lambda: len(batches) == 1)
    batcher.submit(["u1"])
    land.set()
    await _one_per_turn(batcher, ["u2"])
    # Quiet for longer than the lane gathers: the next call is the next batch's.
    await _one_per_turn(batcher, ["u3"], gap=GATHER_QUIET_TURNS + 4)
    await _until(lambda: sum(map(len, batches)) == 4)
    await batcher.close()
    assert batches == [["u0"], ["u1", "u2"], ["u3"]]


async def test_what_the_other_lane_holds_waits_for_its_release_without_spinning() -> None:
    held: set[str] = set()  # the accounts a batch holds, as the engine's claims
    prepares: list[list[str]] = []
    bulk_applied = asyncio.Event()

    async def prepare(batch: list[str], bulk: bool) -> Prepared[str]:
        prepares.append(batch)
        later = [x for x in batch if x[1:] in held]
        run = [x for x in batch if x not in later]
        if not run:
            return Prepared([], later=later)
        mine = {x[1:] for x in run}
        held.update(mine)

        async def finish() -> list[str]:
            if run[0].startswith("s"):
                await bulk_applied.wait()
            return []
        return Prepared(run, finish, later, release=lambda: held.difference_update(mine))

    batcher: Batcher[str] = Batcher(prepare, lambda items, e: None, max_batch=4, window_s=0,
                                    max_queue=100, shared_batch=8)
    batcher.start()
    batcher.submit(["s1", "s2"], object())  # a stream's batch on accounts 1 and 2
    await asyncio.sleep(0.01)
    batcher.submit(["u1"])  # a unary call on account 1: the stream's batch holds it
    await asyncio.sleep(0.05)
    assert prepares == [["s1", "s2"], ["u1"]]  # tried once, then it waits
    bulk_applied.set()
    await batcher.close()
    assert prepares == [["s1", "s2"], ["u1"], ["u1"]]
    assert (batcher.batches, batcher.items, held) == (2, 3, set())


async def test_batches_are_full_without_small_calls() -> None:
    batches, batcher = _sizes()
    batcher.submit([f"s{n}" for n in range(40)], object())
    batcher.submit(["b0", "b1"])  # a call of more than 8 // 8: bulk too
    batcher.start()
    await batcher.close()
    assert [len(b) for b in batches] == [16, 16, 10]


async def test_streams_wait_their_turn_to_queue_while_two_batches_of_theirs_wait() -> None:
    batches, batcher = _sizes()
    batcher.submit([f"s{n}" for n in range(32)], object())  # 2 x max_batch
    waiting = asyncio.create_task(batcher.stream_room())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    batcher.submit([f"c{n}" for n in range(20)])  # calls are not held back
    batcher.start()
    await asyncio.wait_for(waiting, 1)  # a batch took some: room again
    await batcher.close()
    assert sum(map(len, batches)) == 52


async def test_items_held_back_while_a_batch_is_prepared_are_collected_before_the_next() -> None:
    # The engine holds unary calls back while the batcher is busy and submits them together
    # when it collects (one parse for all); none may wait once the batcher goes idle.
    seen: list[list[int]] = []
    held: list[int] = []
    release = asyncio.Event()
    batcher: Batcher[int]

    def collect() -> None:
        if held:
            batcher.submit(held[:])
            held.clear()

    async def prepare(batch: list[int], bulk: bool) -> Prepared[int]:
        seen.append(batch)
        if batch == [1]:
            await release.wait()

        async def finish() -> list[int]:
            return []
        return Prepared(batch, finish)

    batcher = Batcher(prepare, lambda items, e: None, max_batch=10, window_s=0, max_queue=100,
                      collect=collect)
    batcher.start()
    batcher.submit([1])
    while not seen:
        await asyncio.sleep(0.001)
    assert batcher.preparing
    held += [2, 3, 4]  # came while [1] was being prepared
    release.set()
    while len(seen) < 2:
        await asyncio.sleep(0.001)
    assert seen == [[1], [2, 3, 4]]
    held.append(5)  # accepted, held back, when the batcher is told to close: it runs too
    await batcher.close()
    assert seen == [[1], [2, 3, 4], [5]]
    assert not batcher.preparing and not held
