"""An apply sent again (its reply was lost: a connection broke, a node failed over after it
ran) applies nothing twice: the version check refuses the second run, so the engine reads
the account again and answers from the stored answer."""

from __future__ import annotations

from tests.helpers import SMS_RG, mscc, request
from tollgate.engine.storage import keys
from tollgate.engine.storage.session_blob import pack_session, unpack_session
from tollgate.engine.storage.state import SessionState
from tollgate.engine.storage.writes import AccountWrite, SessionWrite
from tollgate.v1 import charging_pb2 as cpb


async def test_an_apply_sent_twice_is_applied_once(tollgate, gateway):
    await gateway.setup()
    store = tollgate.store
    p = store.partition("acct-0")
    acct, _ = await store.get_account("acct-0")
    write = AccountWrite(
        key=keys.account(p, "acct-0"), expected_version=acct.version,
        sets={"money": acct.money - 700}, records=[b"record"],
        sessions=[SessionWrite("x1", ended=True, value=pack_session(
            SessionState("x1", "sub-0", 0, True, False, 1, account_id="acct-0")))])
    first = await store.apply({p: [write]}, 60_000)
    again = await store.apply({p: [write]}, 60_000)
    assert first == {p: set()}
    assert again == {p: {0}}  # refused: the version moved with the first run
    after, _ = await store.get_account("acct-0")
    assert after.money == acct.money - 700
    assert after.version == acct.version + 1
    assert await store.redis.xlen(keys.usage_stream(p)) == 1
    session = unpack_session("x1", await store.redis.get(keys.session(p, "x1")))
    assert session is not None and session.account_id == "acct-0"
    assert 0 < await store.redis.pttl(keys.session(p, "x1")) <= 60_000


async def test_an_answered_event_sent_again_is_answered_from_redis_not_recharged(tollgate,
                                                                               gateway):
    [sub] = await gateway.setup()
    event = request("sms", 0, cpb.EVENT, sub, mscc(SMS_RG, used=1, field="service_units"))
    ans = await gateway.charge(event)
    assert ans.result == cpb.SUCCESS
    money = (await gateway.account("acct-0")).money_micros
    tollgate.engine.accounts.clear()  # as after a resend: nothing cached, all from Redis
    assert await gateway.charge(event) == ans
    assert (await gateway.account("acct-0")).money_micros == money
