"""Provisioning that touches an account and a subscriber (different slots on Redis Cluster)
runs in ordered steps; these tests stop between the steps, as a crash would, and show that
the state in between charges nothing wrongly and that running the call again finishes it."""

from __future__ import annotations

from tests.helpers import SMS_RG, mscc, request
from tollgate.engine.storage import keys
from tollgate.engine.storage.state import member_caps_value
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import events_pb2
from tollgate.v1 import provisioning_pb2 as ppb


def add_member(sub: str) -> ppb.AddMemberRequest:
    return ppb.AddMemberRequest(account_id="acct-0", subscriber_id=sub,
                                caps=ppb.MemberCaps(money_micros=1_000_000))


async def test_add_member_stopped_after_the_caps_charges_nothing_and_a_retry_finishes(
        tollgate, gateway):
    await gateway.setup()
    store = tollgate.store
    # Step 1 only: the caps are on the account, the subscriber does not exist yet.
    account_key = keys.account(store.partition("acct-0"), "acct-0")
    await store.redis.hset(account_key, "m:kid", member_caps_value(1_000_000, [0, 0, 0]))
    sms = request("sms-1", 0, cpb.EVENT, "kid", mscc(SMS_RG, used=1, field="service_units"))
    assert (await gateway.charge(sms)).result == cpb.USER_UNKNOWN

    acct = await gateway.provisioning.AddMember(add_member("kid"))
    assert [m.subscriber_id for m in acct.members] == ["kid"]
    sub = await gateway.provisioning.GetSubscriber(ppb.GetSubscriberRequest(subscriber_id="kid"))
    assert (sub.account_id, sub.state) == ("acct-0", com.ACTIVE)


async def test_remove_member_stopped_after_the_subscriber_charges_nothing_and_a_retry_finishes(
        tollgate, gateway):
    await gateway.setup()
    await gateway.provisioning.AddMember(add_member("kid"))
    store = tollgate.store
    # Step 1 only: the subscriber is gone, its caps are still on the account.
    await store.redis.delete(keys.subscriber("kid"))
    sms = request("sms-1", 0, cpb.EVENT, "kid", mscc(SMS_RG, used=1, field="service_units"))
    assert (await gateway.charge(sms)).result == cpb.USER_UNKNOWN

    acct = await gateway.provisioning.RemoveMember(
        ppb.RemoveMemberRequest(account_id="acct-0", subscriber_id="kid"))
    assert list(acct.members) == []


async def test_a_state_change_left_in_the_outbox_is_sent_by_the_next_call(tollgate, gateway):
    [sub] = await gateway.setup()
    store = tollgate.store
    # A crash after the state was stored, before its event reached the stream.
    left = events_pb2.Event(event_id=f"state:{sub}:1", kind=events_pb2.STATE_CHANGED,
                            account_id="acct-0", subscriber_id=sub, time_ms=1,
                            detail="GRACE").SerializeToString()
    await store.redis.hset(keys.subscriber(sub), mapping={"state": int(com.GRACE),
                                                          "pev": left})

    await gateway.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id=sub,
                                                                 state=com.GRACE))

    stream = keys.events_stream(store.partition("acct-0"))
    sent = [events_pb2.Event.FromString(f[b"e"]) for _, f in await store.redis.xrange(stream)]
    assert [(e.event_id, e.detail) for e in sent] == [(f"state:{sub}:1", "GRACE")]
    assert await store.redis.hget(keys.subscriber(sub), "pev") is None
