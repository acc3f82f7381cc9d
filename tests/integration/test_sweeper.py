"""The stale-reservation sweeper: silent sessions give back what they hold, once, atomically."""

from __future__ import annotations

import asyncio
import time

from tests.helpers import DATA_RG, MB, VOICE_RG, mscc, request, sample_plan
from tollgate.engine.storage import keys
from tollgate.engine.storage.session_blob import unpack_session
from tollgate.engine.storage.sweeper import Sweeper
from tollgate.v1 import charging_pb2 as cpb

LATER = int(time.time() * 1000) + 10 * 3600 * 1000  # far past validity + grace


async def open_sessions(gateway, sub, n):
    for k in range(n):
        a = await gateway.charge(request(f"s{k}", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0),
                                         mscc(VOICE_RG, want=0, field="time_seconds")))
        assert a.result == cpb.SUCCESS


async def test_silent_sessions_have_their_reservations_released(tollgate, gateway):
    [sub] = await gateway.setup()
    await open_sessions(gateway, sub, 3)
    held = await gateway.account("acct-0")
    assert held.buckets[0].reserved == 30 * MB and held.reserved_micros > 0

    released = await Sweeper(tollgate.store, tollgate.engine.clock).sweep_once(LATER)

    assert released == 6  # data and voice of three sessions
    acct = await gateway.account("acct-0")
    assert acct.buckets[0].reserved == 0 and acct.buckets[0].remaining == 100 * MB
    assert acct.reserved_micros == 0 and acct.money_micros == held.money_micros + \
        held.reserved_micros
    assert list(acct.reservations) == []


async def test_a_session_still_within_its_validity_is_left_alone(tollgate, gateway):
    [sub] = await gateway.setup()
    await open_sessions(gateway, sub, 1)

    released = await Sweeper(tollgate.store, tollgate.engine.clock).sweep_once()

    assert released == 0
    assert (await gateway.account("acct-0")).buckets[0].reserved == 10 * MB


async def test_two_sweepers_racing_release_each_reservation_once(tollgate, gateway):
    [sub] = await gateway.setup()
    await open_sessions(gateway, sub, 20)
    held = len((await gateway.account("acct-0")).reservations)
    sweepers = [Sweeper(tollgate.store, tollgate.engine.clock, batch=3) for _ in range(2)]

    counts = await asyncio.gather(*(s.sweep_once(LATER) for s in sweepers))

    assert held > 20
    assert sum(counts) == held
    acct = await gateway.account("acct-0")
    assert acct.buckets[0].reserved == 0 and acct.buckets[0].remaining == 100 * MB
    assert acct.reserved_micros == 0


async def test_late_usage_of_a_swept_session_is_still_charged(tollgate, gateway):
    [sub] = await gateway.setup()
    await open_sessions(gateway, sub, 1)
    await Sweeper(tollgate.store, tollgate.engine.clock).sweep_once(LATER)

    a = await gateway.charge(request("s0", 1, cpb.TERMINATION, sub, mscc(DATA_RG, used=3 * MB)))

    assert a.result == cpb.SUCCESS
    acct = await gateway.account("acct-0")
    assert acct.buckets[0].used == 3 * MB
    assert acct.buckets[0].reserved == 0


async def _score(tollgate, session_id: str) -> float | None:
    p = tollgate.store.partition("acct-0")
    return await tollgate.store.redis.zscore(keys.open_sessions(p), keys.session(p, session_id))


async def _expiry(tollgate, session_id: str) -> int:
    p = tollgate.store.partition("acct-0")
    s = unpack_session(session_id, await tollgate.store.redis.get(keys.session(p, session_id)))
    assert s is not None
    return s.expiry_ms


async def test_a_refreshed_session_is_moved_on_in_the_zset_not_swept(tollgate, gateway):
    """Requests push a session's expiry (in its value) later without a ZADD each; the
    sweeper, finding the older score due, moves it to the expiry instead of releasing."""
    [sub] = await gateway.setup()
    now = int(time.time() * 1000)
    tollgate.engine.clock = lambda: now
    await open_sessions(gateway, sub, 1)
    first = await _expiry(tollgate, "s0")
    assert await _score(tollgate, "s0") == first
    now += 600_000  # ten minutes on, well within validity
    a = await gateway.charge(request("s0", 1, cpb.UPDATE, sub, mscc(DATA_RG, used=MB, want=0)))
    assert a.result == cpb.SUCCESS
    later = await _expiry(tollgate, "s0")
    assert later > first
    assert await _score(tollgate, "s0") == first  # not rewritten by the UPDATE
    sweeper = Sweeper(tollgate.store, tollgate.engine.clock)

    assert await sweeper.sweep_once(first + 1) == 0
    assert await _score(tollgate, "s0") == later
    assert (await gateway.account("acct-0")).buckets[0].reserved == 10 * MB

    assert await sweeper.sweep_once(later + 1) == 2  # data and voice
    assert await _score(tollgate, "s0") is None


async def test_a_swept_session_that_comes_back_is_swept_again_when_silent(tollgate, gateway):
    [sub] = await gateway.setup()
    now = int(time.time() * 1000)
    tollgate.engine.clock = lambda: now
    await open_sessions(gateway, sub, 1)
    sweeper = Sweeper(tollgate.store, tollgate.engine.clock)
    assert await sweeper.sweep_once(LATER) == 2
    assert await _score(tollgate, "s0") is None
    now = LATER + 1000

    a = await gateway.charge(request("s0", 1, cpb.UPDATE, sub, mscc(DATA_RG, used=MB, want=0)))

    assert a.result == cpb.SUCCESS
    expiry = await _expiry(tollgate, "s0")
    assert await _score(tollgate, "s0") == expiry  # back in the zset
    assert (await gateway.account("acct-0")).buckets[0].reserved == 10 * MB
    assert await sweeper.sweep_once(expiry + 1) == 1
    acct = await gateway.account("acct-0")
    assert acct.buckets[0].reserved == 0 and acct.buckets[0].remaining == 99 * MB


async def test_a_shrinking_expiry_sets_the_score_again(tollgate, gateway):
    """The score may only lag behind a later expiry: one that comes earlier (a grant with a
    shorter validity) is written to the zset, or the sweeper would be late."""
    plan = sample_plan()
    plan.rates[0].validity_time_s = 600  # data
    plan.rates[1].validity_time_s = 7200  # voice
    [sub] = await gateway.setup(plan=plan)
    now = int(time.time() * 1000)
    tollgate.engine.clock = lambda: now
    await open_sessions(gateway, sub, 1)  # data and voice: the voice's 7200 s
    first = await _expiry(tollgate, "s0")
    now += 60_000
    a = await gateway.charge(request("s0", 1, cpb.UPDATE, sub, mscc(DATA_RG, used=MB, want=0)))
    assert a.result == cpb.SUCCESS
    shorter = await _expiry(tollgate, "s0")  # only data's 600 s granted now

    assert shorter < first
    assert await _score(tollgate, "s0") == shorter


async def test_a_release_that_would_pass_int64_changes_nothing_and_stays_due(
        tollgate, gateway, db, config, caplog):
    [sub] = await gateway.setup()
    await open_sessions(gateway, sub, 1)
    p = keys.partition_of("acct-0", config.partitions)
    account = keys.account(p, "acct-0")
    await db.hset(account, "money", str(2**63 - 1000))  # giving back the voice hold overflows
    before = await db.hgetall(account)
    session = keys.session(p, "s0")
    held = await db.get(session)

    released = await Sweeper(tollgate.store, tollgate.engine.clock).sweep_once(LATER)

    # Nothing half-applied: the account, the session's reservations and its place in the
    # open-session zset are as they were, and the refusal is logged.
    assert released == 0
    assert await db.hgetall(account) == before
    assert await db.get(session) == held
    s = unpack_session("s0", held)
    assert s is not None and set(s.reservations) == {DATA_RG, VOICE_RG}
    assert await db.zscore(keys.open_sessions(p), session) is not None
    assert "past int64" in caplog.text
