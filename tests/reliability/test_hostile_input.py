"""Hostile input over the real gRPC port: arbitrary ChargeRequest messages and raw bytes.

Properties (hypothesis): the server never crashes and keeps answering; a request that breaks a
rule of the contract is never answered SUCCESS and says what is wrong; a refused request
changes nothing in Redis; and whatever is accepted keeps the books balanced (no int64 wrap,
no negative charge). Plus the limits: oversized batches and messages are refused clearly.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers import (
    DATA_RG,
    EUR,
    SMS_RG,
    VOICE_RG,
    Gateway,
    any_event_time,
    running,
    sample_plan,
)
from tests.integration.ledger import balance_problems, usage_records
from tests.reliability.modes import scaled
from tollgate.engine.charging.decode import MAX_TIME_MS, REPORTING_REASONS
from tollgate.engine.charging.kernels.charge import MONEY_LIMIT
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.redis_client import connect_async
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

SUB = "sub-0-0"
STEEP_RG = 300  # priced at MONEY_LIMIT per unit: price x units overflows int64 at once
MONEY = 10**15
LIMITS = {"max_id_length": 64, "max_units_per_request": 8, "max_requests_per_call": 50,
          "max_message_bytes": 256 * 1024}
CHARGING = "/tollgate.v1.Charging/"


def steep_plan() -> ppb.Plan:
    plan = sample_plan("hostile")
    plan.rates.append(ppb.Rate(rating_group=STEEP_RG, unit_type=com.SERVICE_UNITS,
                               price_micros=MONEY_LIMIT, increment=1, default_quota=1))
    return plan


@pytest.fixture
async def hostile(config: Config, redis_url: str):
    """A Tollgate with small limits, one rich account and an open session 's-open'. Every
    event time up to the year 9999 is accepted, so that the fuzzed times reach the rating
    (the window around the server's clock has its own tests)."""
    cfg = any_event_time(config.replace(**LIMITS))
    async with running(cfg) as gw:
        await gw.setup(plan=steep_plan(), money=MONEY)
        ans = await gw.charge(cpb.ChargeRequest(
            session_id="s-open", request_number=0, type=cpb.INITIAL, subscriber_id=SUB,
            units=[cpb.ServiceUnits(rating_group=DATA_RG, requested=cpb.Units())]))
        assert ans.result == cpb.SUCCESS, ans
        db = connect_async(redis_url)
        yield gw, db, cfg
        await db.aclose()


# --- strategies ------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
IDS = st.one_of(st.sampled_from(["", "s-open", "s-new", "x" * 65, "y" * 64, "tab\there",
                                 "ünïcødé-☎-会话", "\u200b", "nul\x00", "🚀" * 30]), TEXT)
SUBSCRIBERS = st.one_of(st.sampled_from([SUB, SUB, SUB, "unknown", "", "s" * 100, "sub-☎"]),
                        TEXT)
INT64 = st.one_of(st.sampled_from([0, 1, -1, 1000, 10**6, 2**50, 2**50 + 1, 2**62, 2**63 - 1,
                                   -(2**63)]), st.integers(-(2**63), 2**63 - 1))
UINT32 = st.integers(0, 2**32 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
UNITS = st.builds(cpb.Units, total_octets=INT64, input_octets=INT64, output_octets=INT64,
                  time_seconds=INT64, service_units=INT64)
SMALL_UNITS = st.builds(cpb.Units, total_octets=st.integers(0, 10**7),
                        time_seconds=st.integers(0, 3600), service_units=st.integers(0, 5))


@st.composite
def service_units(draw: st.DrawFn) -> cpb.ServiceUnits:
    su = cpb.ServiceUnits(
        rating_group=draw(st.one_of(st.sampled_from([DATA_RG, VOICE_RG, SMS_RG, STEEP_RG, 0]),
                                    UINT32)),
        service_id=draw(UINT32),
        reporting_reason=draw(st.one_of(st.sampled_from([0, 1, 3, 4]), INT32)))
    for name in ("used", "requested"):
        if draw(st.booleans()):
            getattr(su, name).CopyFrom(draw(st.one_of(SMALL_UNITS, UNITS)))
    return su


@st.composite
def charge_requests(draw: st.DrawFn) -> cpb.ChargeRequest:
    units = draw(st.lists(service_units(), max_size=LIMITS["max_units_per_request"] + 2))
    if units and draw(st.integers(0, 9)) == 0:
        units.append(units[0])  # the same rating group twice
    return cpb.ChargeRequest(
        session_id=draw(IDS), request_number=draw(st.one_of(st.sampled_from([0, 1, 2]), UINT32)),
        type=draw(st.one_of(st.sampled_from([0, 1, 2, 3, 4]), INT32)),
        subscriber_id=draw(SUBSCRIBERS),
        event_time_ms=draw(st.one_of(st.just(0), st.just(MAX_TIME_MS + 1), INT64)),
        zone=draw(st.one_of(st.sampled_from(["", "roam-eu", "z" * 65]), TEXT)),
        origin=draw(st.one_of(st.just("pgw-fuzz"), TEXT)), units=units)


VALID_UNITS = st.builds(cpb.Units, total_octets=st.integers(0, 2**50),
                       time_seconds=st.integers(0, 2**50),
                       service_units=st.one_of(st.integers(0, 5), st.integers(0, 2**50)))


@st.composite
def valid_requests(draw: st.DrawFn) -> cpb.ChargeRequest:
    """Follows every rule; reaches rating, the kernel and the apply."""
    kind = draw(st.sampled_from([cpb.INITIAL, cpb.UPDATE, cpb.TERMINATION, cpb.EVENT]))
    groups = draw(st.lists(st.one_of(st.sampled_from([DATA_RG, VOICE_RG, SMS_RG, STEEP_RG]),
                                     UINT32), unique=True, min_size=kind == cpb.EVENT,
                           max_size=4))
    units = []
    for rg in groups:
        su = cpb.ServiceUnits(rating_group=rg, reporting_reason=draw(st.sampled_from(
            sorted(REPORTING_REASONS))))
        if kind == cpb.EVENT or draw(st.booleans()):
            su.used.CopyFrom(draw(VALID_UNITS.filter(lambda u: u.ByteSize() > 0)))
        if kind in (cpb.INITIAL, cpb.UPDATE) and draw(st.booleans()):
            su.requested.CopyFrom(draw(VALID_UNITS))
        units.append(su)
    session = draw(st.sampled_from(["s-open", "s-a", "s-b", "ev"]))
    return cpb.ChargeRequest(
        session_id=session, type=kind, subscriber_id=SUB, units=units, zone="",
        request_number=0 if kind == cpb.INITIAL else draw(st.integers(0, 6)),
        event_time_ms=draw(st.sampled_from([0, 0, 1_700_000_000_000, MAX_TIME_MS])))


@st.composite
def mutated(draw: st.DrawFn) -> cpb.ChargeRequest:
    """A valid request with one field made hostile."""
    msg = draw(valid_requests())
    bad = draw(charge_requests())
    field = draw(st.sampled_from(["session_id", "type", "subscriber_id", "event_time_ms",
                                  "zone", "units", "request_number"]))
    if field == "units":
        msg.units.extend(bad.units)
    else:
        setattr(msg, field, getattr(bad, field))
    return msg


HOSTILE = st.one_of(valid_requests(), mutated(), charge_requests())


def rule_breaks(msg: cpb.ChargeRequest, cfg: Config) -> list[str]:
    """The contract's rules, written independently of engine/charging/decode.py."""
    out = []
    if msg.type not in (cpb.INITIAL, cpb.UPDATE, cpb.TERMINATION, cpb.EVENT):
        out.append("type")
    for name in ("session_id", "subscriber_id"):
        value = getattr(msg, name)
        if not value or len(value) > cfg.max_id_length or not value.isprintable():
            out.append(name)
    for name in ("zone", "origin", "destination"):
        value = getattr(msg, name)
        if len(value) > cfg.max_id_length or not value.isprintable():
            out.append(name)
    if msg.type == cpb.INITIAL and msg.request_number != 0:
        out.append("request_number")
    if not 0 <= msg.event_time_ms <= MAX_TIME_MS:
        out.append("event_time_ms")
    if len(msg.units) > cfg.max_units_per_request:
        out.append("units count")
    groups = [su.rating_group for su in msg.units]
    if len(set(groups)) != len(groups):
        out.append("duplicated rating group")
    for su in msg.units:
        if su.reporting_reason not in REPORTING_REASONS:
            out.append("reporting_reason")
        for part in (su.used, su.requested):
            values = (part.total_octets, part.input_octets, part.output_octets,
                      part.time_seconds, part.service_units)
            if min(values) < 0 or max(values) > cfg.max_units:
                out.append("units value")
    if msg.type == cpb.EVENT and not msg.units:
        out.append("event without units")
    return out


async def redis_state(db: aioredis.Redis) -> dict[bytes, bytes]:
    """Every key but the dashboard's counters (engine/web/series.py), which count refusals
    too, by design."""
    return {k: await db.dump(k) for k in sorted(await db.keys("*"))
            if not k.startswith(b"tg:{web}:")}


async def check_books(gw: Gateway, redis_url: str) -> None:
    acct = await gw.account("acct-0")
    records = await usage_records(redis_url)
    assert balance_problems({"acct-0": acct}, {"acct-0": MONEY}, records) == []
    assert all(r.money_micros >= 0 for r in records), [r for r in records if r.money_micros < 0]


# --- properties -------------------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=scaled(60, 1000), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(reqs=st.lists(HOSTILE, min_size=1, max_size=4), batch=st.booleans())
async def test_arbitrary_requests_never_crash_never_false_success_refusals_change_nothing(
        hostile, redis_url, reqs, batch):
    gw, db, cfg = hostile
    before = await redis_state(db)
    answers = await gw.batch(reqs) if batch else [await gw.charge(r) for r in reqs]
    assert len(answers) == len(reqs)
    refused_only = True
    for req, ans in zip(reqs, answers, strict=True):
        assert (ans.session_id, ans.request_number) == (req.session_id, req.request_number)
        assert ans.charged_micros >= 0, ans
        broken = rule_breaks(req, cfg)
        event(f"{'breaks a rule' if broken else 'follows the rules'}: "
              f"{cpb.ResultCode.Name(ans.result)}")
        if broken:
            assert ans.result != cpb.SUCCESS, (broken, req, ans)
        if ans.result != cpb.SUCCESS:
            assert ans.error_message, ans
            assert not ans.grants and ans.charged_micros == 0, ans
        else:
            refused_only = False  # (a repeated session + request number gets the first answer)
            # A grant may be refused (e.g. a price beyond int64) but never with a wrapped amount.
            assert all(g.granted.ByteSize() == 0 or g.result == cpb.SUCCESS for g in ans.grants)
    if refused_only:
        assert await redis_state(db) == before, "a refused request changed Redis"
    await check_books(gw, redis_url)


@pytest.mark.slow
@settings(max_examples=scaled(80, 1000), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=300),
                      charge_requests().map(lambda m: m.SerializeToString()[:-1]),
                      charge_requests().map(lambda m: b"\xff" + m.SerializeToString())),
       method=st.sampled_from(["Charge", "ChargeBatch"]))
async def test_raw_bytes_are_refused_or_answered_never_a_crash(hostile, redis_url, data, method):
    gw, db, _ = hostile
    call = gw.channel.unary_unary(CHARGING + method)
    before = await redis_state(db)
    try:
        reply = await call(data)
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "cannot read" in (e.details() or "")
        assert await redis_state(db) == before
        return
    parsed = (cpb.ChargeAnswer.FromString(reply) if method == "Charge"
              else cpb.ChargeBatchAnswer.FromString(reply))
    answers = [parsed] if method == "Charge" else list(parsed.answers)
    if all(a.result != cpb.SUCCESS for a in answers):
        assert await redis_state(db) == before
    await check_books(gw, redis_url)


# --- explicit hostile cases -------------------------------------------------------------------


async def test_a_100k_request_batch_is_refused_with_the_limit(hostile, redis_url):
    gw, db, cfg = hostile
    before = await redis_state(db)
    tiny = cpb.ChargeRequest(session_id="e", type=cpb.EVENT, subscriber_id=SUB)
    big = cpb.ChargeBatchRequest(requests=[tiny] * 100_000)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await gw.charging.ChargeBatch(big)
    # 100k requests is ~1.5 MB: over max_message_bytes here (256 kB)...
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    assert str(cfg.max_message_bytes) in (e.value.details() or ""), e.value.details()
    # ... and a message under the byte limit but over max_requests_per_call is refused by count.
    over = cpb.ChargeBatchRequest(requests=[tiny] * (cfg.max_requests_per_call + 1))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await gw.charging.ChargeBatch(over)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {cfg.max_requests_per_call}" in (e.value.details() or "")
    call = gw.charging.ChargeStream()
    await call.write(over)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.read()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await redis_state(db) == before


async def test_the_default_limits_refuse_100k_requests_by_count(gateway, tollgate):
    limit = tollgate.config.max_requests_per_call
    tiny = cpb.ChargeRequest(session_id="e", type=cpb.EVENT, subscriber_id="nobody")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await gateway.charging.ChargeBatch(cpb.ChargeBatchRequest(requests=[tiny] * 100_000))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"100000 requests in one message; the limit is {limit}" == e.value.details()


@pytest.mark.parametrize(("req", "needle"), [
    (cpb.ChargeRequest(session_id="s", type=cpb.EVENT, subscriber_id=SUB,
                       units=[cpb.ServiceUnits(rating_group=SMS_RG,
                                               used=cpb.Units(service_units=2**63 - 1))]),
     "larger than the limit"),
    (cpb.ChargeRequest(session_id="s", type=cpb.EVENT, subscriber_id=SUB,
                       units=[cpb.ServiceUnits(rating_group=SMS_RG,
                                               used=cpb.Units(service_units=-5))]),
     "negative"),
    (cpb.ChargeRequest(session_id="s", type=77, subscriber_id=SUB), "type must be"),
    (cpb.ChargeRequest(session_id="s", type=cpb.INITIAL, subscriber_id=SUB,
                       units=[cpb.ServiceUnits(rating_group=DATA_RG, reporting_reason=99)]),
     "reporting_reason 99 is not known"),
    (cpb.ChargeRequest(session_id="s", type=cpb.INITIAL, subscriber_id=SUB,
                       units=[cpb.ServiceUnits(rating_group=DATA_RG)] * 2), "appears twice"),
    (cpb.ChargeRequest(session_id="s" * 65, type=cpb.INITIAL, subscriber_id=SUB),
     "longer than 64"),
    (cpb.ChargeRequest(session_id="s", type=cpb.INITIAL, subscriber_id=SUB,
                       units=[cpb.ServiceUnits(rating_group=n) for n in range(9)]),
     "at most 8 rating groups"),
    (cpb.ChargeRequest(session_id="s", type=cpb.INITIAL, subscriber_id=SUB,
                       event_time_ms=2**63 - 1), "event_time_ms must be between"),
])
async def test_each_rule_is_refused_with_a_message_saying_what(hostile, req, needle):
    gw, db, _ = hostile
    before = await redis_state(db)
    ans = await gw.charge(req)
    assert ans.result in (cpb.INVALID_AVP_VALUE, cpb.MISSING_AVP), ans
    assert needle in ans.error_message, ans.error_message
    assert await redis_state(db) == before


async def test_price_times_units_beyond_int64_is_refused_not_wrapped(hostile, redis_url):
    gw, _, _ = hostile
    # 2**50 units at 2**62 micros each: 2**112 micros.
    ans = await gw.charge(cpb.ChargeRequest(
        session_id="steep", type=cpb.EVENT, subscriber_id=SUB,
        units=[cpb.ServiceUnits(rating_group=STEEP_RG, used=cpb.Units(service_units=2**50))]))
    [grant] = ans.grants
    assert grant.result != cpb.SUCCESS, ans
    assert ans.charged_micros == 0
    await check_books(gw, redis_url)


async def test_a_bad_request_does_not_spoil_its_batch(hostile, redis_url):
    """A request that decodes but cannot be placed in time (the year 9999 in a plan with a
    time zone once failed the whole batch) is answered alone; its neighbours are charged."""
    gw, _, _ = hostile
    plan = sample_plan("zoned")
    plan.timezone = "Europe/Berlin"
    await gw.provisioning.PutPlan(plan)
    await gw.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id="zoned", plan_id="zoned", initial_money_micros=10 * EUR))
    await gw.provisioning.CreateSubscriber(ppb.Subscriber(subscriber_id="z-sub",
                                                          account_id="zoned"))
    sms = cpb.ServiceUnits(rating_group=SMS_RG, used=cpb.Units(service_units=1))
    late = cpb.ChargeRequest(session_id="late", type=cpb.EVENT, subscriber_id="z-sub",
                             units=[sms], event_time_ms=MAX_TIME_MS)
    fine = [cpb.ChargeRequest(session_id=f"ok{n}", type=cpb.EVENT, subscriber_id="z-sub",
                              units=[sms]) for n in range(3)]
    answers = await gw.batch([fine[0], late, *fine[1:]])
    assert [a.result for a in answers] == [cpb.SUCCESS] * 4, answers
    await asyncio.sleep(0)
    await check_books(gw, redis_url)
