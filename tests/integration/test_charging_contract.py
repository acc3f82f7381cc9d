"""The Charging service contract (spec/charging-api.md), end to end over a real gRPC channel.

Balances are read back with GetAccount: `money_micros` is free money (reservations taken
out), so the money that left the account is the drop in `money_micros + reserved_micros`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.helpers import (
    DATA_RG,
    EUR,
    MB,
    SMS_RG,
    VOICE_RG,
    Gateway,
    mscc,
    request,
    running,
    sample_plan,
)
from tollgate.engine.charging import wire
from tollgate.engine.charging.engine import DECODE_STEP
from tollgate.engine.errors import InvalidArgument
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.redis_client import connect
from tollgate.engine.storage.session_blob import unpack_session
from tollgate.engine.storage.store import Store
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

INITIAL, UPDATE, TERMINATION, EVENT = cpb.INITIAL, cpb.UPDATE, cpb.TERMINATION, cpb.EVENT
UNKNOWN_RG = 999


# --- helpers --------------------------------------------------------------------------------


def voice(*, used: int | None = None, want: int | None = None) -> cpb.ServiceUnits:
    return mscc(VOICE_RG, used=used, want=want, field="time_seconds")


def sms(count: int) -> cpb.ServiceUnits:
    return mscc(SMS_RG, used=count, field="service_units")


def held(acct: ppb.Account) -> int:
    """Money of the account, free plus reserved (what only charging takes away)."""
    return acct.money_micros + acct.reserved_micros


def bucket(acct: ppb.Account, bucket_id: str = "data-100mb") -> ppb.Bucket:
    [b] = [b for b in acct.buckets if b.bucket_id == bucket_id]
    return b


def plan_with(bundle_units: int | None, plan_id: str = "custom") -> ppb.Plan:
    """The sample plan under another id, with a smaller data bundle or (None) none."""
    plan = sample_plan(plan_id)
    if bundle_units is None:
        del plan.bundles[:]
    else:
        plan.bundles[0].units = bundle_units
    return plan


async def usage_records(config: Config) -> list:
    store = Store(config.redis_url, config.partitions)
    try:
        return [r for p in range(config.partitions) for _, r in await store.usage_records(p)]
    finally:
        await store.close()


def session_keys(config: Config, session_id: str) -> list[bytes]:
    client = connect(config.redis_url)
    try:
        return list(client.scan_iter(match=f"tg:*:sess:{session_id}"))
    finally:
        client.close()



async def stream(gateway: Gateway, messages: list[list[cpb.ChargeRequest]]
                 ) -> list[list[cpb.ChargeAnswer]]:
    async def requests() -> AsyncIterator[cpb.ChargeBatchRequest]:
        for reqs in messages:
            yield cpb.ChargeBatchRequest(requests=reqs)

    call = gateway.charging.ChargeStream(requests())
    return [list(ans.answers) async for ans in call]


# --- 1. session lifecycle and pricing -------------------------------------------------------


async def test_initial_grants_the_default_quota_from_the_bundle(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))

    assert a.result == cpb.SUCCESS, a
    assert (a.session_id, a.request_number) == ("s1", 0)
    [g] = a.grants
    assert (g.rating_group, g.result) == (DATA_RG, cpb.SUCCESS)
    assert g.granted.total_octets == 10 * MB
    assert (g.validity_time_s, g.quota_holding_time_s) == (3600, 300)
    assert g.volume_threshold_octets == 2 * MB  # 20 % of the grant
    assert a.charged_micros == 0
    acct = await gateway.account("acct-0")
    b = bucket(acct)
    assert (b.used, b.reserved, b.remaining) == (0, 10 * MB, 90 * MB)
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR, 0)


async def test_initial_grants_the_requested_units_when_fewer_than_the_default(gateway):
    [sub] = await gateway.setup()

    data = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=2 * MB)))
    calls = await gateway.charge(request("s2", 0, INITIAL, sub, voice(want=120)))

    assert data.grants[0].granted.total_octets == 2 * MB
    assert calls.grants[0].granted.time_seconds == 120
    acct = await gateway.account("acct-0")
    assert bucket(acct).reserved == 2 * MB
    assert acct.reserved_micros == 200_000  # two minutes held
    assert acct.money_micros == 10 * EUR - 200_000


async def test_initial_grants_at_most_the_default_quota(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=50 * MB)))

    assert a.grants[0].granted.total_octets == 10 * MB
    assert bucket(await gateway.account("acct-0")).reserved == 10 * MB


async def test_update_charges_the_used_units_and_grants_more(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))

    a = await gateway.charge(request("s1", 1, UPDATE, sub, mscc(DATA_RG, used=4 * MB, want=0)))

    assert a.result == cpb.SUCCESS, a
    assert a.grants[0].granted.total_octets == 10 * MB
    assert a.charged_micros == 0  # all from the bundle
    acct = await gateway.account("acct-0")
    b = bucket(acct)
    assert (b.used, b.reserved, b.remaining) == (4 * MB, 10 * MB, 86 * MB)
    assert held(acct) == 10 * EUR


async def test_termination_charges_the_final_usage_and_releases_the_rest(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0), voice(want=0)))
    await gateway.charge(request("s1", 1, UPDATE, sub, mscc(DATA_RG, used=4 * MB, want=0),
                                 voice(used=30, want=0)))

    a = await gateway.charge(request("s1", 2, TERMINATION, sub, mscc(DATA_RG, used=1 * MB),
                                     voice(used=61)))

    assert a.result == cpb.SUCCESS, a
    assert [(g.rating_group, g.result) for g in a.grants] == [(DATA_RG, cpb.SUCCESS),
                                                               (VOICE_RG, cpb.SUCCESS)]
    assert all(not g.HasField("granted") for g in a.grants)
    # A session is billed on its cumulative usage: 30 s + 61 s = 91 s -> two minutes in all.
    assert a.charged_micros == 100_000
    acct = await gateway.account("acct-0")
    b = bucket(acct)
    assert (b.used, b.reserved, b.remaining) == (5 * MB, 0, 95 * MB)
    assert acct.reserved_micros == 0
    assert acct.money_micros == 10 * EUR - 200_000
    assert list(acct.reservations) == []


async def test_termination_releases_rating_groups_it_does_not_mention(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0), voice(want=0)))

    a = await gateway.charge(request("s1", 1, TERMINATION, sub, mscc(DATA_RG, used=MB)))

    assert [g.rating_group for g in a.grants] == [DATA_RG]
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR, 0)
    assert (bucket(acct).used, bucket(acct).reserved) == (MB, 0)
    assert list(acct.reservations) == []


async def test_voice_usage_is_rounded_up_to_whole_minutes_of_the_whole_call(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("c1", 0, INITIAL, sub, voice(want=0)))
    before = held(await gateway.account("acct-0"))

    a = await gateway.charge(request("c1", 1, UPDATE, sub, voice(used=61, want=0)))
    b = await gateway.charge(request("c1", 2, UPDATE, sub, voice(used=1, want=0)))
    c = await gateway.charge(request("c1", 3, TERMINATION, sub, voice(used=120)))

    # 61 s: two minutes; 62 s: still two; 182 s: four. Not per report (2 + 1 + 2).
    assert (a.charged_micros, b.charged_micros, c.charged_micros) == (200_000, 0, 200_000)
    acct = await gateway.account("acct-0")
    assert before - held(acct) == 400_000
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR - 400_000, 0)


async def test_usage_below_the_first_increment_is_charged_the_first_increment(gateway):
    plan = sample_plan("per-second")
    del plan.rates[:]
    plan.rates.append(ppb.Rate(rating_group=VOICE_RG, unit_type=com.SECONDS, price_micros=1000,
                               increment=1, first_increment=60, default_quota=600))
    [sub] = await gateway.setup(plan=plan)
    await gateway.charge(request("c1", 0, INITIAL, sub, voice(want=0)))

    short = await gateway.charge(request("c1", 1, UPDATE, sub, voice(used=10, want=0)))
    longer = await gateway.charge(request("c1", 2, TERMINATION, sub, voice(used=61)))

    assert short.charged_micros == 60_000  # 10 s billed as the 60 s minimum
    assert longer.charged_micros == 11_000  # 71 s in all: per second above the minimum, once
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR - 71_000, 0)


async def test_data_is_charged_from_the_bundle_first_then_from_money(gateway):
    [sub] = await gateway.setup(plan=plan_with(3 * MB), money=20 * EUR)
    first = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))
    assert first.grants[0].granted.total_octets == 3 * MB  # what is left in the bundle

    # 500 octets over the bundle: one 1000-octet increment of money.
    over = await gateway.charge(request("s1", 1, UPDATE, sub,
                                        mscc(DATA_RG, used=3 * MB + 500, want=0)))

    assert over.charged_micros == 1000
    assert over.grants[0].granted.total_octets == 10 * MB  # now granted from money
    acct = await gateway.account("acct-0")
    b = bucket(acct)
    assert (b.used, b.remaining, b.reserved) == (3 * MB, 0, 0)
    assert acct.reserved_micros == 10 * EUR
    assert acct.money_micros == 20 * EUR - 1000 - 10 * EUR

    last = await gateway.charge(request("s1", 2, TERMINATION, sub,
                                        mscc(DATA_RG, used=2 * MB + 1)))

    # 5 000 501 octets in all bill 5 001 000: the 500 billed ahead are not billed again.
    assert last.charged_micros == 2_000_000
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (20 * EUR - 1000 - 2_000_000, 0)


async def test_charged_micros_equals_the_money_that_left_the_balance(gateway):
    [sub] = await gateway.setup(plan=plan_with(1 * MB))
    steps = [
        request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0), voice(want=0)),
        request("s1", 1, UPDATE, sub, mscc(DATA_RG, used=1 * MB + 1, want=2 * MB),
                voice(used=59, want=0)),
        request("s1", 2, UPDATE, sub, mscc(DATA_RG, used=1_234_567, want=2 * MB),
                voice(used=181, want=0)),
        request("e1", 0, EVENT, sub, sms(3)),
        request("s1", 3, TERMINATION, sub, mscc(DATA_RG, used=999), voice(used=1)),
    ]
    # Billed on the session's cumulative usage: data 2 234 568 -> 2 235 000 octets after the
    # second report (1 234 000 more), voice 240 s (3 more minutes), then 1 kB and 1 minute.
    expected = [0, 1000 + 100_000, 1_234_000 + 300_000, 150_000, 1000 + 100_000]

    charged = []
    for req in steps:
        before = held(await gateway.account("acct-0"))
        a = await gateway.charge(req)
        assert a.result == cpb.SUCCESS, a
        assert all(g.result == cpb.SUCCESS for g in a.grants), a
        assert before - held(await gateway.account("acct-0")) == a.charged_micros
        charged.append(a.charged_micros)

    assert charged == expected
    acct = await gateway.account("acct-0")
    assert acct.money_micros == 10 * EUR - sum(expected)
    assert acct.reserved_micros == 0


async def test_event_charges_a_one_shot_sms(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("e1", 0, EVENT, sub, sms(3)))

    assert a.result == cpb.SUCCESS, a
    [g] = a.grants
    assert (g.rating_group, g.result, g.granted.service_units) == (SMS_RG, cpb.SUCCESS, 3)
    assert a.charged_micros == 150_000
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR - 150_000, 0)
    assert list(acct.reservations) == []


async def test_event_without_enough_money_is_refused_and_charges_nothing(gateway, config):
    [sub] = await gateway.setup(money=120_000)  # two SMS, not three
    before = await gateway.account("acct-0")

    a = await gateway.charge(request("e1", 0, EVENT, sub, sms(3)))

    assert a.result == cpb.SUCCESS, a  # processed; the refusal is per grant
    [g] = a.grants
    assert g.result == cpb.CREDIT_LIMIT_REACHED
    assert a.charged_micros == 0
    after = await gateway.account("acct-0")
    assert (after.money_micros, after.reserved_micros) == (before.money_micros, 0)
    assert await usage_records(config) == []


async def test_grant_limited_by_money_gives_the_units_the_money_covers(gateway):
    [sub] = await gateway.setup(plan=plan_with(None), money=2_500_000)

    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))

    [g] = a.grants
    assert g.result == cpb.SUCCESS
    assert g.granted.total_octets == 2_500_000  # 2500 increments of 1000 micros
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (0, 2_500_000)


async def test_grant_limited_by_money_carries_a_final_unit_indication(gateway):
    [sub] = await gateway.setup(plan=plan_with(None), money=2_500_000)

    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))

    assert a.grants[0].granted.total_octets == 2_500_000
    assert a.grants[0].final_unit.action == cpb.TERMINATE


async def test_grant_is_refused_with_credit_limit_reached_when_no_money_is_left(gateway):
    [sub] = await gateway.setup(plan=plan_with(None), money=999)  # less than one increment

    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))

    assert a.result == cpb.SUCCESS, a
    assert a.grants[0].result == cpb.CREDIT_LIMIT_REACHED
    assert not a.grants[0].HasField("granted")
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (999, 0)


async def test_credit_limit_lets_a_postpaid_account_go_below_zero(gateway):
    [sub] = await gateway.setup(plan=plan_with(None), money=0, credit_limit=1 * EUR)

    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))
    t = await gateway.charge(request("s1", 1, TERMINATION, sub, mscc(DATA_RG, used=400_000)))

    assert a.grants[0].granted.total_octets == 1 * MB
    assert t.charged_micros == 400_000
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (-400_000, 0)


# --- 2. several rating groups, zones --------------------------------------------------------


async def test_rating_groups_in_one_request_are_granted_and_charged_independently(gateway):
    [sub] = await gateway.setup()
    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0),
                                     voice(want=120)))
    assert [(g.rating_group, g.result) for g in a.grants] == [(DATA_RG, cpb.SUCCESS),
                                                               (VOICE_RG, cpb.SUCCESS)]
    assert a.grants[0].granted.total_octets == 10 * MB
    assert a.grants[1].granted.time_seconds == 120

    u = await gateway.charge(request("s1", 1, UPDATE, sub, mscc(DATA_RG, used=3 * MB, want=0),
                                     voice(used=90, want=0)))

    assert u.result == cpb.SUCCESS, u
    assert u.grants[0].granted.total_octets == 10 * MB
    assert u.grants[1].granted.time_seconds == 300
    assert u.charged_micros == 200_000  # only the voice: the data came from the bundle
    acct = await gateway.account("acct-0")
    b = bucket(acct)
    assert (b.used, b.reserved) == (3 * MB, 10 * MB)
    assert acct.reserved_micros == 500_000
    assert acct.money_micros == 10 * EUR - 200_000 - 500_000
    assert sorted((r.rating_group, r.bucket_id, r.units, r.amount)
                  for r in acct.reservations) == [(DATA_RG, "data-100mb", 10 * MB, 10 * MB),
                                                  (VOICE_RG, "", 300, 500_000)]


async def test_unpriced_rating_group_gets_rating_failed_on_its_grant_only(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0),
                                     mscc(UNKNOWN_RG, want=0), voice(want=60)))

    assert a.result == cpb.SUCCESS, a
    assert [(g.rating_group, g.result) for g in a.grants] == [
        (DATA_RG, cpb.SUCCESS), (UNKNOWN_RG, cpb.RATING_FAILED), (VOICE_RG, cpb.SUCCESS)]
    assert not a.grants[1].HasField("granted")
    assert a.grants[0].granted.total_octets == 10 * MB
    assert a.grants[2].granted.time_seconds == 60
    acct = await gateway.account("acct-0")
    assert sorted(r.rating_group for r in acct.reservations) == [DATA_RG, VOICE_RG]


async def test_zone_without_a_rate_gets_rating_failed(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0),
                                     zone="roam-mars"))

    assert a.result == cpb.SUCCESS, a
    assert a.grants[0].result == cpb.RATING_FAILED
    acct = await gateway.account("acct-0")
    assert (bucket(acct).reserved, acct.reserved_micros) == (0, 0)
    assert list(acct.reservations) == []


async def test_roaming_zone_uses_the_roaming_rate(gateway):
    [sub] = await gateway.setup(plan=plan_with(None))

    a = await gateway.charge(request("r1", 0, INITIAL, sub, mscc(DATA_RG, want=0),
                                     zone="roam-eu"))

    assert a.grants[0].result == cpb.SUCCESS
    assert a.grants[0].granted.total_octets == 1 * MB  # the roaming default quota
    acct = await gateway.account("acct-0")
    assert acct.reserved_micros == 5 * EUR  # 1000 increments at 5000 micros

    t = await gateway.charge(request("r1", 1, TERMINATION, sub, mscc(DATA_RG, used=500_001),
                                     zone="roam-eu"))

    assert t.charged_micros == 501 * 5000
    acct = await gateway.account("acct-0")
    assert (acct.money_micros, acct.reserved_micros) == (10 * EUR - 501 * 5000, 0)


async def test_home_zone_uses_the_home_rate(gateway):
    [sub] = await gateway.setup(plan=plan_with(None))
    await gateway.charge(request("h1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))

    t = await gateway.charge(request("h1", 1, TERMINATION, sub, mscc(DATA_RG, used=500_001)))

    assert t.charged_micros == 501 * 1000


# --- 3. retransmissions ---------------------------------------------------------------------


async def test_retransmitted_initial_returns_the_same_answer_and_reserves_once(gateway):
    [sub] = await gateway.setup()
    req = request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0), voice(want=0))
    first = await gateway.charge(req)
    before = await gateway.account("acct-0")

    again = await gateway.charge(req)

    assert again == first
    assert await gateway.account("acct-0") == before
    assert before.reserved_micros == 500_000
    assert bucket(before).reserved == 10 * MB


async def test_retransmitted_update_returns_the_same_answer_and_charges_once(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, voice(want=0)))
    req = request("s1", 1, UPDATE, sub, voice(used=150, want=0))
    first = await gateway.charge(req)
    before = await gateway.account("acct-0")

    again = await gateway.charge(req)

    assert again == first
    assert first.charged_micros == 300_000
    after = await gateway.account("acct-0")
    assert after == before
    assert held(after) == 10 * EUR - 300_000


async def test_retransmitted_termination_returns_the_same_answer_and_charges_once(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, voice(want=0)))
    req = request("s1", 1, TERMINATION, sub, voice(used=60))
    first = await gateway.charge(req)
    before = await gateway.account("acct-0")

    again = await gateway.charge(req)

    assert again == first
    assert first.charged_micros == 100_000
    assert await gateway.account("acct-0") == before
    assert (before.money_micros, before.reserved_micros) == (10 * EUR - 100_000, 0)


async def test_retransmitted_event_returns_the_same_answer_and_charges_once(gateway):
    [sub] = await gateway.setup()
    req = request("e1", 0, EVENT, sub, sms(2))
    first = await gateway.charge(req)
    before = await gateway.account("acct-0")

    again = await gateway.charge(req)

    assert again == first
    assert first.charged_micros == 100_000
    assert await gateway.account("acct-0") == before
    assert before.money_micros == 10 * EUR - 100_000


async def test_answered_events_leave_no_session_in_the_account_cache(gateway, tollgate):
    [sub] = await gateway.setup()

    answers = await gateway.batch([request(f"sms-{n}", 0, EVENT, sub, sms(1))
                                   for n in range(40)])

    assert all(a.result == cpb.SUCCESS for a in answers), answers
    cached = tollgate.engine.accounts["acct-0"]
    assert [sid for sid, value in cached.sessions.items()
            if unpack_session(sid, value).is_event] == []


async def test_an_event_retransmitted_after_it_left_the_cache_is_answered_and_charged_once(
        gateway, tollgate, config):
    [sub] = await gateway.setup()
    events = [request(f"sms-{n}", 0, EVENT, sub, sms(1)) for n in range(40)]
    answers = await gateway.batch(events)
    before = await gateway.account("acct-0")
    assert "sms-7" not in tollgate.engine.accounts["acct-0"].sessions

    again = await gateway.charge(events[7])

    assert again == answers[7] and again.charged_micros == 50_000, again
    assert await gateway.account("acct-0") == before
    assert [r.session_id for r in await usage_records(config)].count("sms-7") == 1


async def test_retransmitted_refusal_is_answered_the_same(gateway):
    [sub] = await gateway.setup(money=10_000)
    req = request("e1", 0, EVENT, sub, sms(1))
    first = await gateway.charge(req)
    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="acct-0",
                                                      amount_micros=1 * EUR))

    again = await gateway.charge(req)

    assert first.grants[0].result == cpb.CREDIT_LIMIT_REACHED
    assert again == first
    assert (await gateway.account("acct-0")).money_micros == 10_000 + 1 * EUR


async def test_retransmission_in_the_same_batch_is_answered_the_same_and_charged_once(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, voice(want=0)))
    update = request("s1", 1, UPDATE, sub, voice(used=61, want=0))
    event = request("e1", 0, EVENT, sub, sms(1))
    initial = request("s2", 0, INITIAL, sub, voice(want=120))

    answers = await gateway.batch([update, event, update, initial, event, initial])

    assert [(a.session_id, a.request_number) for a in answers] == [
        ("s1", 1), ("e1", 0), ("s1", 1), ("s2", 0), ("e1", 0), ("s2", 0)]
    assert all(a.result == cpb.SUCCESS for a in answers), answers
    assert answers[0] == answers[2]
    assert answers[1] == answers[4]
    assert answers[3] == answers[5]
    acct = await gateway.account("acct-0")
    assert acct.reserved_micros == 500_000 + 200_000
    assert held(acct) == 10 * EUR - 200_000 - 50_000


async def test_retransmission_after_a_server_restart_returns_the_stored_answer(config):
    async with running(config) as gw:
        [sub] = await gw.setup()
        await gw.charge(request("open", 0, INITIAL, sub, mscc(DATA_RG, want=0), voice(want=0)))
        update = request("open", 1, UPDATE, sub, mscc(DATA_RG, used=MB, want=0),
                         voice(used=61, want=0))
        await gw.charge(request("done", 0, INITIAL, sub, voice(want=0)))
        termination = request("done", 1, TERMINATION, sub, voice(used=30))
        event = request("e1", 0, EVENT, sub, sms(1))
        originals = [await gw.charge(r) for r in (update, termination, event)]
        before = await gw.account("acct-0")

    async with running(config) as gw:
        again = [await gw.charge(r) for r in (update, termination, event)]
        batched = await gw.batch([update, termination, event])
        after = await gw.account("acct-0")

    assert [a.charged_micros for a in originals] == [200_000, 100_000, 50_000]
    assert again == originals
    assert batched == originals
    assert after == before


async def test_request_number_below_the_last_answered_gets_unknown_session(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, voice(want=0)))
    await gateway.charge(request("s1", 2, UPDATE, sub, voice(used=60, want=0)))
    before = await gateway.account("acct-0")

    a = await gateway.charge(request("s1", 1, UPDATE, sub, voice(used=60, want=0)))

    assert a.result == cpb.UNKNOWN_SESSION_ID, a
    assert (a.session_id, a.request_number) == ("s1", 1)
    assert a.error_message
    assert await gateway.account("acct-0") == before


async def test_request_number_no_longer_kept_gets_unknown_session(gateway, config):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, voice(want=0)))
    for rn in range(1, config.answers_kept + 2):
        await gateway.charge(request("s1", rn, UPDATE, sub, voice(used=1, want=0)))
    before = await gateway.account("acct-0")

    a = await gateway.charge(request("s1", 1, UPDATE, sub, voice(used=1, want=0)))

    assert a.result == cpb.UNKNOWN_SESSION_ID, a
    assert await gateway.account("acct-0") == before


# --- 4. bad input ---------------------------------------------------------------------------


async def test_unknown_subscriber_gets_user_unknown(gateway):
    await gateway.setup()

    a = await gateway.charge(request("s1", 0, INITIAL, "nobody", mscc(DATA_RG, want=0)))

    assert a.result == cpb.USER_UNKNOWN, a
    assert "nobody" in a.error_message
    assert list(a.grants) == []


async def test_suspended_subscriber_gets_end_user_service_denied(gateway):
    await gateway.setup()
    await gateway.provisioning.CreateSubscriber(ppb.Subscriber(
        subscriber_id="barred", account_id="acct-0", state=com.SUSPENDED))

    a = await gateway.charge(request("s1", 0, INITIAL, "barred", mscc(DATA_RG, want=0)))

    assert a.result == cpb.END_USER_SERVICE_DENIED, a
    assert bucket(await gateway.account("acct-0")).reserved == 0


async def test_update_for_an_unknown_session_returns_unknown_session(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("never", 1, UPDATE, sub, mscc(DATA_RG, used=MB)))

    assert a.result == cpb.UNKNOWN_SESSION_ID, a
    assert a.error_message
    assert bucket(await gateway.account("acct-0")).used == 0


async def test_update_after_termination_returns_unknown_session(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, voice(want=0)))
    await gateway.charge(request("s1", 1, TERMINATION, sub, voice(used=60)))
    before = await gateway.account("acct-0")

    a = await gateway.charge(request("s1", 2, UPDATE, sub, voice(used=60, want=0)))

    assert a.result == cpb.UNKNOWN_SESSION_ID, a
    assert await gateway.account("acct-0") == before


async def test_termination_for_an_unknown_session_returns_unknown_session(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("never", 3, TERMINATION, sub, voice(used=60)))

    assert a.result == cpb.UNKNOWN_SESSION_ID, a
    assert held(await gateway.account("acct-0")) == 10 * EUR


async def test_negative_used_units_get_invalid_avp_value_naming_the_field(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))

    a = await gateway.charge(request("s1", 1, UPDATE, sub, mscc(DATA_RG, used=-5, want=0)))

    assert a.result == cpb.INVALID_AVP_VALUE, a
    assert "units[0].used.total_octets" in a.error_message
    assert (a.session_id, a.request_number) == ("s1", 1)


async def test_missing_session_id_gets_missing_avp(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("", 0, INITIAL, sub, mscc(DATA_RG, want=0)))

    assert a.result == cpb.MISSING_AVP, a
    assert "session_id" in a.error_message


async def test_unknown_request_type_gets_invalid_avp_value(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("s1", 0, 9, sub, mscc(DATA_RG, want=0)))

    assert a.result == cpb.INVALID_AVP_VALUE, a
    assert "type" in a.error_message


async def test_duplicated_rating_group_gets_invalid_avp_value(gateway):
    [sub] = await gateway.setup()

    a = await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0),
                                     mscc(DATA_RG, want=MB)))

    assert a.result == cpb.INVALID_AVP_VALUE, a
    assert f"rating group {DATA_RG}" in a.error_message


async def test_unknown_reporting_reason_gets_invalid_avp_value(gateway):
    [sub] = await gateway.setup()
    await gateway.charge(request("s1", 0, INITIAL, sub, mscc(DATA_RG, want=0)))
    su = mscc(DATA_RG, used=MB, want=0)
    su.reporting_reason = 42

    a = await gateway.charge(request("s1", 1, UPDATE, sub, su))

    assert a.result == cpb.INVALID_AVP_VALUE, a
    assert "units[0].reporting_reason" in a.error_message
    assert bucket(await gateway.account("acct-0")).used == 0


async def test_a_request_dated_1970_gets_invalid_avp_value_and_changes_nothing(gateway, config):
    [sub] = await gateway.setup()
    await gateway.charge(request("live", 0, INITIAL, sub, voice(want=0)))
    before = await gateway.account("acct-0")
    records = await usage_records(config)

    answers = await gateway.batch([
        request("live", 1, UPDATE, sub, voice(used=60, want=0), time_ms=1000),
        request("sms-1970", 0, EVENT, sub, sms(1), time_ms=1000)])

    for a in answers:
        assert a.result == cpb.INVALID_AVP_VALUE, a
        assert a.error_message == ("event_time_ms 1000 is outside the accepted window: at most "
                                   "86400 s before and 300 s after the server's clock")
        assert a.charged_micros == 0 and not a.grants
    assert await gateway.account("acct-0") == before
    assert await usage_records(config) == records
    assert session_keys(config, "sms-1970") == []


async def test_a_request_dated_an_hour_ago_is_charged(gateway):
    [sub] = await gateway.setup()
    hour_ago = int(time.time() * 1000) - 3_600_000

    a = await gateway.charge(request("sms-1", 0, EVENT, sub, sms(1), time_ms=hour_ago))

    assert (a.result, a.charged_micros) == (cpb.SUCCESS, 50_000), a


@pytest.mark.parametrize(("method", "body"), [
    ("Charge", b"\xff\xff\xff\xff"),
    ("ChargeBatch", b"\xff\xff\xff\xff"),
    ("Charge", b"\x0a\x02\xff\xfe\x18\x01"),  # session_id that is not UTF-8
])
async def test_unreadable_request_is_refused_with_invalid_argument(gateway, method, body):
    call = gateway.channel.unary_unary(f"/tollgate.v1.Charging/{method}",
                                       request_serializer=bytes,
                                       response_deserializer=bytes)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(body)

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    if method == "Charge":
        assert "cannot read ChargeRequest" in err.value.details()


async def test_unary_calls_sent_together_are_answered_each_and_an_unreadable_one_alone(gateway):
    # The server parses the unary calls of one event-loop turn as one message: an unreadable
    # one among them must fail alone, with the message its bytes alone get.
    [sub] = await gateway.setup()
    call = gateway.channel.unary_unary("/tollgate.v1.Charging/Charge",
                                       request_serializer=bytes, response_deserializer=bytes)
    good = [request(f"u{n}", 0, EVENT, sub, sms(1)).SerializeToString() for n in range(6)]
    bodies = [*good[:3], b"\x0a\x02\xff\xfe\x18\x01", b"\xff\xff\xff\xff", *good[3:]]

    results = await asyncio.gather(*(call(b) for b in bodies), return_exceptions=True)

    answers = [cpb.ChargeAnswer.FromString(r) for r in results if isinstance(r, bytes)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert [(a.session_id, a.result) for a in answers] == [(f"u{n}", cpb.SUCCESS)
                                                           for n in range(6)]
    assert [e.code() for e in refused] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert all("cannot read ChargeRequest" in e.details() for e in refused)
    assert (await gateway.account("acct-0")).money_micros == 10 * EUR - 6 * 50_000


async def test_unary_calls_of_one_turn_are_read_as_one_message(gateway, tollgate, monkeypatch):
    [sub] = await gateway.setup()
    engine = tollgate.engine
    parsed: list[int] = []
    parse_batch = wire.parse_batch

    def counted(data: bytes) -> wire.Parsed:
        out = parse_batch(data)
        parsed.append(out.requests.shape[1])
        return out
    monkeypatch.setattr(wire, "parse_batch", counted)
    bodies = [request(f"t{n}", 0, EVENT, sub, sms(1)).SerializeToString() for n in range(5)]
    bodies.insert(2, request("", 0, EVENT, sub, sms(1)).SerializeToString())  # no session_id

    calls = [engine.submit_one(b) for b in bodies]  # one event-loop turn
    answers = [cpb.ChargeAnswer.FromString(a) for c in calls for a in await c.future]
    unreadable = engine.submit_one(b"\xff\xff\xff\xff")
    beside = engine.submit_one(request("t5", 0, EVENT, sub, sms(1)).SerializeToString())
    with pytest.raises(InvalidArgument, match="cannot read ChargeRequest"):
        await unreadable.future
    [after] = await beside.future

    assert parsed[0] == 6  # all six in one kernel call
    assert cpb.ChargeAnswer.FromString(after).result == cpb.SUCCESS
    assert [(a.session_id, a.result) for a in answers] == [
        ("t0", cpb.SUCCESS), ("t1", cpb.SUCCESS), ("", cpb.MISSING_AVP), ("t2", cpb.SUCCESS),
        ("t3", cpb.SUCCESS), ("t4", cpb.SUCCESS)]
    assert [c.types for c in calls] == [[EVENT]] * 6


async def test_unreadable_stream_message_is_refused_with_invalid_argument(gateway):
    call = gateway.channel.stream_stream("/tollgate.v1.Charging/ChargeStream",
                                         request_serializer=bytes, response_deserializer=bytes)

    async def messages():
        yield b"\xff\xff\xff\xff"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call(messages()):
            pass

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ChargeBatchRequest" in err.value.details()


async def test_bad_request_in_a_batch_does_not_affect_its_neighbours(gateway):
    [sub] = await gateway.setup()
    reqs = [
        request("a", 0, INITIAL, sub, voice(want=60)),
        request("b", 0, INITIAL, sub, voice(used=-1, want=60)),
        request("c", 0, EVENT, sub, sms(1)),
        request("", 0, INITIAL, sub, voice(want=60)),
        request("d", 0, INITIAL, "nobody", voice(want=60)),
        request("e", 0, INITIAL, sub, mscc(DATA_RG, want=MB)),
    ]

    answers = await gateway.batch(reqs)

    assert [(a.session_id, a.result) for a in answers] == [
        ("a", cpb.SUCCESS), ("b", cpb.INVALID_AVP_VALUE), ("c", cpb.SUCCESS),
        ("", cpb.MISSING_AVP), ("d", cpb.USER_UNKNOWN), ("e", cpb.SUCCESS)]
    assert answers[0].grants[0].granted.time_seconds == 60
    assert answers[2].charged_micros == 50_000
    assert answers[5].grants[0].granted.total_octets == MB
    acct = await gateway.account("acct-0")
    assert acct.reserved_micros == 100_000
    assert acct.money_micros == 10 * EUR - 100_000 - 50_000
    assert bucket(acct).reserved == MB


async def test_a_large_message_decoded_in_steps_answers_each_request_in_its_place(gateway):
    # More requests than two engine.charging.engine.DECODE_STEPs: decoded a step at a time,
    # the refusals of later steps stay in their places.
    [sub] = await gateway.setup(money=100 * EUR)
    n, bad, missing = 2 * DECODE_STEP + 72, DECODE_STEP + 6, 2 * DECODE_STEP + 22
    reqs = [request(f"ev{k}", 0, EVENT, sub, sms(1)) for k in range(n)]
    reqs[bad] = request(f"ev{bad}", 0, EVENT, sub, voice(used=-1))
    reqs[missing] = request("", 0, EVENT, sub, sms(1))

    answers = await gateway.batch(reqs)

    assert [a.session_id for a in answers] == [r.session_id for r in reqs]
    refused = {k: a.result for k, a in enumerate(answers) if a.result != cpb.SUCCESS}
    assert refused == {bad: cpb.INVALID_AVP_VALUE, missing: cpb.MISSING_AVP}
    assert "used" in answers[bad].error_message
    acct = await gateway.account("acct-0")
    assert acct.money_micros == 100 * EUR - (n - 2) * 50_000


async def test_rejected_requests_store_nothing(gateway, config):
    [sub] = await gateway.setup()
    await gateway.charge(request("live", 0, INITIAL, sub, voice(want=0)))
    await gateway.charge(request("ended", 0, INITIAL, sub, voice(want=0)))
    await gateway.charge(request("ended", 1, TERMINATION, sub, voice(used=60)))
    before = await gateway.account("acct-0")
    records = await usage_records(config)
    rejected = [
        request("neg", 0, INITIAL, sub, voice(used=-1, want=0)),
        request("neg-req", 0, INITIAL, sub, mscc(DATA_RG, want=-1)),
        request("type", 0, 9, sub, voice(want=0)),
        request("dup", 0, INITIAL, sub, voice(want=0), voice(want=60)),
        request("rn", 3, INITIAL, sub, voice(want=0)),
        request("x" * (config.max_id_length + 1), 0, INITIAL, sub, voice(want=0)),
        request("unknown", 1, UPDATE, sub, voice(used=60, want=0)),
        request("nobody", 0, INITIAL, "nobody", voice(want=0)),
        request("ended", 2, UPDATE, sub, voice(used=60, want=0)),
        request("live", 5, INITIAL, sub, voice(want=0)),
        request("ev", 0, EVENT, sub),
    ]

    answers = await gateway.batch(rejected)
    answers += [await gateway.charge(r) for r in rejected]

    assert all(a.result != cpb.SUCCESS for a in answers), answers
    assert all(a.error_message for a in answers)
    assert all(a.charged_micros == 0 and not a.grants for a in answers)
    assert await gateway.account("acct-0") == before
    assert await usage_records(config) == records
    for sid in ("neg", "neg-req", "type", "dup", "rn", "unknown", "nobody", "ev"):
        assert session_keys(config, sid) == [], sid


async def test_batch_over_the_request_limit_is_refused_with_invalid_argument(gateway, config):
    [sub] = await gateway.setup()
    reqs = [request(f"e{n}", 0, EVENT, sub, sms(1))
            for n in range(config.max_requests_per_call + 1)]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.batch(reqs)

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(config.max_requests_per_call) in err.value.details()
    assert held(await gateway.account("acct-0")) == 10 * EUR


async def test_batch_at_the_request_limit_is_charged(config):
    small = config.replace(max_requests_per_call=5)
    async with running(small) as gw:
        [sub] = await gw.setup()
        answers = await gw.batch([request(f"e{n}", 0, EVENT, sub, sms(1)) for n in range(5)])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gw.batch([request(f"f{n}", 0, EVENT, sub, sms(1)) for n in range(6)])
        acct = await gw.account("acct-0")

    assert [a.result for a in answers] == [cpb.SUCCESS] * 5
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert acct.money_micros == 10 * EUR - 5 * 50_000


async def test_stream_message_over_the_request_limit_ends_the_stream_with_invalid_argument(
        config):
    small = config.replace(max_requests_per_call=3)
    async with running(small) as gw:
        [sub] = await gw.setup()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream(gw, [[request(f"e{n}", 0, EVENT, sub, sms(1)) for n in range(4)]])

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- 5. ChargeStream ordering ---------------------------------------------------------------


def _stream_messages(k: int, subs: list[str], n_messages: int, rng: random.Random
                     ) -> list[list[cpb.ChargeRequest]]:
    """Stream k: three voice sessions, two requests each per message (in session order but
    interleaved with the others), an SMS event and a retransmission of an earlier request."""
    sessions = [(f"k{k}-s{s}", subs[(k + s) % len(subs)]) for s in range(3)]
    messages: list[list[cpb.ChargeRequest]] = []
    # The retransmission is of one of the previous message's own requests (not of its
    # retransmission): older ones may be past answers_kept by the time it runs.
    previous: list[cpb.ChargeRequest] = []
    for m in range(n_messages):
        lanes: list[list[cpb.ChargeRequest]] = []
        for sid, sub in sessions:
            lane = []
            for rn in (2 * m, 2 * m + 1):
                if rn == 0:
                    lane.append(request(sid, rn, INITIAL, sub, voice(want=0)))
                elif m == n_messages - 1 and rn == 2 * m + 1:
                    lane.append(request(sid, rn, TERMINATION, sub, voice(used=60)))
                else:
                    lane.append(request(sid, rn, UPDATE, sub, voice(used=60, want=0)))
            lanes.append(lane)
        lanes.append([request(f"k{k}-e{m}", 0, EVENT, sessions[0][1], sms(1))])
        own = [r for lane in lanes for r in lane]
        if m:
            lanes.append([rng.choice(previous)])
        previous = own
        msg: list[cpb.ChargeRequest] = []
        while lanes:
            lane = rng.choice(lanes)
            msg.append(lane.pop(0))
            if not lane:
                lanes.remove(lane)
        messages.append(msg)
    return messages


async def test_charge_stream_answers_in_request_order_under_concurrent_load(gateway):
    subs = await gateway.setup(accounts=3, subscribers_per_account=2, money=1000 * EUR)
    rng = random.Random(7)
    n_streams, n_messages = 8, 20
    plans = [_stream_messages(k, subs, n_messages, rng) for k in range(n_streams)]

    results = await asyncio.gather(*(stream(gateway, msgs) for msgs in plans))

    charged = 0
    for msgs, answers in zip(plans, results, strict=True):
        assert len(answers) == len(msgs)
        seen: dict[tuple[str, int], cpb.ChargeAnswer] = {}
        for reqs, ans in zip(msgs, answers, strict=True):
            assert [(a.session_id, a.request_number) for a in ans] == [
                (r.session_id, r.request_number) for r in reqs]
            for a in ans:
                assert a.result == cpb.SUCCESS, a
                key = (a.session_id, a.request_number)
                if key in seen:
                    assert a == seen[key]  # a retransmission: the stored answer
                else:
                    seen[key] = a
                    charged += a.charged_micros
    accounts = [await gateway.account(f"acct-{n}") for n in range(3)]
    # Per session: 2 * n_messages - 1 reports of one minute; per message one SMS.
    expected = n_streams * (3 * (2 * n_messages - 1) * 100_000 + n_messages * 50_000)
    assert charged == expected
    assert sum(1000 * EUR - held(a) for a in accounts) == expected
    assert all(a.reserved_micros == 0 and not a.reservations for a in accounts)
