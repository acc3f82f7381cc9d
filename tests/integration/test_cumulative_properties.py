"""Cumulative pricing properties end to end (hypothesis over the real gRPC API and Redis):

(a) splitting a session's usage into any number of reports, at any points inside one tariff
    window, never changes what it costs, and that cost is the plain-Python reference's;
(b) with a bucket of any size, a session never bills more units, nor more money, than the
    same usage paid by money alone;
(c) nothing is lost or created: every micro-unit and bucket unit that left a balance is in a
    rated usage record, and the records add up to what the answers said was charged.

Hypothesis drives synchronous tests; Tollgate runs on its own event loop in a thread
(tests/live.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import VOICE_RG, mscc, request
from tests.live import Live
from tollgate.engine.charging.kernels.reference import RefRate, billed, money
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys, record_block
from tollgate.engine.storage.redis_client import connect
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb
from tollgate.v1 import usage_pb2

T = TypeVar("T")
RICH = 10**15  # no grant or charge is ever refused for money here
PARTITIONS = 8
ids = itertools.count()


@pytest.fixture(scope="module")
def live(redis_server: RedisServer) -> Iterator[Live]:
    client = connect(redis_server.url)
    client.flushall()
    client.close()
    server = Live(Config(listen="127.0.0.1:0", redis_url=redis_server.url,
                         partitions=PARTITIONS, batch_window_ms=0.5, log_format="text",
                         metrics_port=0, subscriber_cache_s=0, plan_refresh_s=0))
    yield server
    server.close()


@st.composite
def rates(draw: st.DrawFn) -> ppb.Rate:
    """Voice rates of every shape that does not depend on the time of day."""
    increment = draw(st.sampled_from([1, 10, 60]))
    steps = []
    if draw(st.booleans()):
        steps = [ppb.Step(from_units=increment * draw(st.integers(1, 3)),
                          increment=draw(st.sampled_from([1, 5, 30])))]
    return ppb.Rate(
        rating_group=VOICE_RG, unit_type=com.SECONDS,
        price_micros=draw(st.sampled_from([1, 7, 100_000, 1_000_000])),
        price_units=draw(st.sampled_from([0, 1, 60, 1000])), increment=increment,
        first_increment=draw(st.sampled_from([0, 30, 60, 90])),
        rounding=draw(st.sampled_from([ppb.ROUNDING_UP, ppb.ROUNDING_HALF_EVEN,
                                       ppb.ROUNDING_DOWN])),
        connect_fee_micros=draw(st.sampled_from([0, 250_000])), steps=steps,
        default_quota=draw(st.sampled_from([30, 600])))


@st.composite
def splits(draw: st.DrawFn) -> list[int]:
    """A session's usage cut into reports at random points (a report may be empty)."""
    total = draw(st.integers(1, 2000))
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=8)))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


def reference(rate: ppb.Rate) -> RefRate:
    return RefRate(price=rate.price_micros, increment=rate.increment,
                   first=rate.first_increment, quota=rate.default_quota, unit=2,
                   per=rate.price_units, rounding=rate.rounding, fee=rate.connect_fee_micros,
                   steps=[(s.from_units, s.increment) for s in rate.steps])


class Line:
    """A plan, an account and its subscriber of their own for one example."""

    def __init__(self, live: Live, rate: ppb.Rate, bucket: int = 0) -> None:
        n = next(ids)
        self.live, self.account, self.sub = live, f"acct-{n}", f"sub-{n}"
        plan = ppb.Plan(plan_id=f"plan-{n}", rates=[rate])
        buckets = [ppb.Bucket(bucket_id="minutes", rating_groups=[VOICE_RG],
                              unit_type=com.SECONDS, initial=bucket, remaining=bucket)
                   ] if bucket else []
        gw = live.gw
        live.run(lambda: gw.provisioning.PutPlan(plan))
        live.run(lambda: gw.provisioning.CreateAccount(ppb.CreateAccountRequest(
            account_id=self.account, plan_id=plan.plan_id, initial_money_micros=RICH,
            buckets=buckets)))
        live.run(lambda: gw.provisioning.CreateSubscriber(
            ppb.Subscriber(subscriber_id=self.sub, account_id=self.account)))

    def call(self, session: str, parts: list[int]) -> int:
        """A call reported in these parts (the last with the TERMINATION); what it cost."""
        voice = VOICE_RG
        session = f"{self.account}/{session}"  # session ids are global, not per account
        reqs = [request(session, 0, cpb.INITIAL, self.sub, mscc(voice, want=0))]
        for n, used in enumerate(parts, start=1):
            last = n == len(parts)
            reqs.append(request(session, n, cpb.TERMINATION if last else cpb.UPDATE, self.sub,
                                mscc(voice, used=used, field="time_seconds",
                                     want=None if last else 0)))
        total = 0
        for r in reqs:
            a = self.live.run(lambda r=r: self.live.gw.charge(r))  # type: ignore[misc]
            assert a.result == cpb.SUCCESS, a
            total += a.charged_micros
        return total

    def books(self) -> tuple[ppb.Account, list[usage_pb2.RatedUsage]]:
        acct = self.live.run(lambda: self.live.gw.account(self.account))
        client = connect(self.live.app.config.redis_url)
        try:
            stream = keys.usage_stream(keys.partition_of(self.account, PARTITIONS))
            found = [usage_pb2.RatedUsage.FromString(r) for sid, f in client.xrange(stream)
                     for _, r in record_block.records(sid, f)]
        finally:
            client.close()
        return acct, [r for r in found if r.account_id == self.account]


SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(rate=rates(), parts=splits())
def test_a_session_costs_the_same_however_often_it_is_reported(live, rate, parts):
    line = Line(live, rate)

    once = line.call("once", [sum(parts)])
    split = line.call("split", parts)

    expected = money(billed(sum(parts), reference(rate)), reference(rate), 0, 0, 0)
    assert expected is not None
    assert once == split == expected[0] + rate.connect_fee_micros
    acct, records = line.books()
    # (c) the books balance: what left the money is in the records and the answers.
    assert (acct.money_micros, acct.reserved_micros) == (RICH - once - split, 0)
    assert sum(r.money_micros for r in records) == once + split
    assert sum(r.units for r in records) == 2 * sum(parts)


@SETTINGS
@given(rate=rates(), parts=splits(), size=st.integers(1, 2500))
def test_a_bucket_never_makes_a_session_dearer(live, rate, parts, size):
    with_bucket, without = Line(live, rate, bucket=size), Line(live, rate)

    paid_with = with_bucket.call("c", parts)
    paid_without = without.call("c", parts)

    acct, records = with_bucket.books()
    _, plain = without.books()
    billed_with = sum(c.units for r in records for c in r.charges)
    billed_without = sum(c.units for r in plain for c in r.charges)
    assert billed_with <= billed_without
    assert paid_with <= paid_without
    # (c) bucket units and money that left the account are in its records.
    [bucket] = acct.buckets
    assert bucket.initial - bucket.remaining == sum(
        c.units for r in records for c in r.charges if c.bucket_id)
    assert (acct.money_micros, bucket.reserved) == (RICH - paid_with, 0)
    assert sum(r.money_micros for r in records) == paid_with
