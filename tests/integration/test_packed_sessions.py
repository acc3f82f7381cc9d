"""Sessions as packed values in Redis: one value per session, kept for the answer retention
once ended; sessions an earlier release kept as hashes are converted at start; the sweeper
releases a session only as it read it."""

from __future__ import annotations

from tests.helpers import DATA_RG, VOICE_RG, mscc, request
from tollgate.engine.storage import keys
from tollgate.engine.storage.session_blob import pack_session, reservation_value, unpack_session
from tollgate.engine.storage.store import SESSION_FORMAT
from tollgate.engine.storage.sweeper import CHANGED, Sweeper
from tollgate.v1 import charging_pb2 as cpb

LATER = 2**50  # past any session's expiry


async def test_a_session_is_one_value_and_an_ended_one_keeps_its_answers_a_while(
        tollgate, gateway, db):
    [sub] = await gateway.setup()
    opened = await gateway.charge(request("s1", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    p = tollgate.store.partition("acct-0")
    key = keys.session(p, "s1")
    assert await db.type(key) == b"string" and await db.pttl(key) == -1  # open: no TTL
    s = unpack_session("s1", await db.get(key))
    assert s is not None and not s.ended and s.account_id == "acct-0"
    assert s.subscriber_id == sub and set(s.reservations) == {DATA_RG}
    assert s.answers == {0: opened.SerializeToString()}

    await gateway.charge(request("s1", 1, cpb.TERMINATION, sub, mscc(DATA_RG, used=1000)))
    ended = unpack_session("s1", await db.get(key))
    assert ended is not None and ended.ended and list(ended.answers) == [0, 1]
    assert 0 < await db.pttl(key) <= tollgate.config.answer_retention_s * 1000


async def test_hash_sessions_of_an_earlier_release_are_converted_once(tollgate, gateway, db):
    [sub] = await gateway.setup()
    p = tollgate.store.partition("acct-0")
    held = "|".join(["", "5", "700", "1", "0"])
    open_hash = {"rn": "3", "st": "open", "t": "1000", "sub": sub, "acct": "acct-0",
                 "a:2": b"two", "a:3": b"three", f"r:{VOICE_RG}": held, "exp": "9000",
                 f"c:{VOICE_RG}": "60|60|0|700", "mc": "700"}
    await db.hset(keys.session(p, "old-open"), mapping=open_hash)
    await db.hset(keys.session(p, "old-ended"), mapping={"rn": "0", "st": "ended",
                                                         "sub": sub, "acct": "acct-0"})
    await db.pexpire(keys.session(p, "old-ended"), 50_000)
    await db.hdel(keys.META, "sessions")  # as before this release

    assert await tollgate.store.convert_hash_sessions() == 2
    assert await tollgate.store.convert_hash_sessions() == 0  # once
    assert await db.hget(keys.META, "sessions") == SESSION_FORMAT
    s = unpack_session("old-open", await db.get(keys.session(p, "old-open")))
    assert s is not None and s.last_rn == 3 and s.answers == {2: b"two", 3: b"three"}
    assert s.expiry_ms == 9000 and s.cost == 700 and s.rated[VOICE_RG].charged == 700
    assert reservation_value(s.reservations[VOICE_RG]) == held
    assert await db.pttl(keys.session(p, "old-open")) == -1
    assert 0 < await db.pttl(keys.session(p, "old-ended")) <= 50_000


async def test_the_sweeper_leaves_a_session_that_changed_since_it_read_it(tollgate, gateway,
                                                                          db):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    p = tollgate.store.partition("acct-0")
    key = keys.session(p, "s1")
    account = keys.account(p, "acct-0")
    sweeper = Sweeper(tollgate.store, tollgate.engine.clock)
    read = await db.get(key)
    call_keys, args = sweeper._call(p, keys.open_sessions(p), key, read, LATER)
    s = unpack_session("s1", read)
    assert s is not None
    s.last_rn = 1  # a request came between the sweeper's read and its call
    await db.set(key, pack_session(s))
    before = await db.hgetall(account)

    assert await sweeper._script(keys=call_keys, args=args) == CHANGED
    assert await db.hgetall(account) == before
    assert await db.zscore(keys.open_sessions(p), key) is not None

    assert await sweeper.sweep_once(LATER) == 1  # read again: released
    swept = unpack_session("s1", await db.get(key))
    assert swept is not None and swept.reservations == {} and swept.expiry_ms == 0
    assert swept.last_rn == 1
