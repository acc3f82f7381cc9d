"""The lifecycle process against a real Redis, a real Tollgate and local receivers: quiet hours,
retries and dead letters, timed state transitions with a fake clock (and the engine's answers
after them), the forfeit at termination, campaigns, and the Lifecycle API."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from zoneinfo import ZoneInfo

import grpc
import pytest

from tests.helpers import DATA_RG, EUR, MB, Gateway, data_rate, mscc, request
from tests.integration.receivers import FakeClock, HttpReceiver, eventually, lifecycle_table
from tollgate.engine.billing.reconcile import reconcile
from tollgate.engine.charging.engine import wall_clock_ms
from tollgate.engine.lifecycle.process import Lifecycle
from tollgate.engine.lifecycle.settings import Settings, parse_settings
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import lifecycle_pb2 as lpb
from tollgate.v1 import lifecycle_pb2_grpc, usage_pb2
from tollgate.v1 import provisioning_pb2 as ppb

DAY_MS = 86_400_000
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def amsterdam_ms(day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(2024, 1, day, hour, minute, tzinfo=AMSTERDAM).timestamp() * 1000)


def text(template: str, subject: str = "") -> dict[str, dict[str, str]]:
    return {"en": {"subject": subject, "text": template}}


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    yield r
    r.stop()


class Setup:
    def __init__(self, app: Tollgate, channel: grpc.aio.Channel, lc: Lifecycle) -> None:
        self.app = app
        self.gw = Gateway(channel)
        self.api = lifecycle_pb2_grpc.LifecycleStub(channel)
        self.lc = lc

    async def state(self, sub: str) -> int:
        return (await self.gw.provisioning.GetSubscriber(
            ppb.GetSubscriberRequest(subscriber_id=sub))).state

    async def log(self, sub: str) -> list[lpb.Notification]:
        return list((await self.api.ListNotifications(
            lpb.ListNotificationsRequest(subscriber_id=sub))).notifications)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(amsterdam_ms(17, 12))


@asynccontextmanager
async def start(config: Config, settings: Settings, clock: Callable[[], int]
                ) -> AsyncIterator[Setup]:
    config = config.replace(subscriber_cache_s=0.0)
    async with Tollgate(config, clock=clock) as app, \
            grpc.aio.insecure_channel(app.address) as channel, \
            Lifecycle(config, settings, clock) as lc:
        yield Setup(app, channel, lc)


def plan(**kw: object) -> ppb.Plan:
    fields: dict[str, object] = {"plan_id": "p", "name": "Plan", "rates": [data_rate()]}
    fields.update(kw)
    return ppb.Plan(**fields)  # type: ignore[arg-type]


async def account(s: Setup, sub: str, money: int = 5 * EUR, plan_msg: ppb.Plan | None = None,
                  account_id: str = "a1") -> None:
    await s.gw.provisioning.PutPlan(plan_msg or plan())
    await s.gw.provisioning.CreateAccount(ppb.CreateAccountRequest(
        account_id=account_id, plan_id=(plan_msg or plan()).plan_id,
        initial_money_micros=money))
    await s.gw.provisioning.CreateSubscriber(ppb.Subscriber(subscriber_id=sub,
                                                            account_id=account_id))


# --- quiet hours ------------------------------------------------------------------------------


async def test_quiet_hours_defer_a_non_critical_message_and_send_a_critical_one(
        config, http, clock):
    clock.ms = amsterdam_ms(17, 23, 30)  # 23:30 in Amsterdam
    settings = parse_settings(lifecycle_table(http, quiet_hours="22:00-07:00", rules=[
        {"name": "suspended", "event": "STATE_CHANGED", "states": ["SUSPENDED"],
         "critical": True, "channels": ["webhook"], "templates": text("Service stopped.")},
        {"name": "topped-up", "event": "TOPPED_UP", "channels": ["webhook"],
         "templates": text("Topped up $money.")}]))
    async with start(config, settings, clock) as s:
        await account(s, "sub-q")
        await s.api.SetPreferences(lpb.Preferences(subscriber_id="sub-q",
                                                   timezone="Europe/Amsterdam"))
        await s.gw.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id="sub-q",
                                                                  state=com.SUSPENDED))
        await eventually(lambda: http.on("/hook"), what="the critical message")
        await s.gw.provisioning.TopUp(ppb.TopUpRequest(topup_id="t", account_id="a1",
                                                       amount_micros=EUR))

        async def deferred() -> list[lpb.Notification]:
            return [n for n in await s.log("sub-q") if n.status == lpb.DEFERRED]
        [wait] = await eventually(deferred, what="the deferred message")
        assert (wait.rule, wait.due_ms) == ("topped-up", amsterdam_ms(18, 7))
        assert [h.json()["rule"] for h in http.on("/hook")] == ["suspended"]

        clock.ms = amsterdam_ms(18, 6, 59)
        await s.lc.send_due()
        assert len(http.on("/hook")) == 1
        clock.ms = amsterdam_ms(18, 7)
        await eventually(lambda: len(http.on("/hook")) == 2, what="the message after 07:00")
        assert http.on("/hook")[1].json()["text"] == "Topped up 1.00."


# --- retries and the dead-letter stream -------------------------------------------------------


async def test_a_failing_webhook_is_retried_with_back_off_then_dead_lettered(config, http):
    http.status = 503
    settings = parse_settings(lifecycle_table(
        http, max_attempts=4, retry_base_s=0.2, retry_max_s=10.0, rules=[
            {"name": "topped-up", "event": "TOPPED_UP", "channels": ["webhook"],
             "templates": text("Topped up.")}]))
    async with start(config, settings, wall_clock_ms) as s:  # real time: real back-off
        await account(s, "sub-r")
        await s.gw.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id="sub-r",
                                                                  state=com.GRACE))
        await s.gw.provisioning.TopUp(ppb.TopUpRequest(topup_id="t", account_id="a1",
                                                       amount_micros=EUR))
        dead = await eventually(s.lc.outbox.dead_letters, timeout_s=15, what="a dead letter")
        hits = http.on("/hook")
        assert len(hits) == 4
        assert len({h.headers["X-Tollgate-Message-Id"] for h in hits}) == 1
        gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
        for gap, wanted in zip(gaps, (0.2, 0.4, 0.8), strict=True):
            assert wanted * 0.9 <= gap < wanted + 1.0
        [msg] = dead
        assert (msg["rule"], msg["attempts"]) == ("topped-up", 4)
        statuses = [(n.status, n.attempts) for n in reversed(await s.log("sub-r"))
                    if n.rule == "topped-up"]
        assert statuses == [(lpb.QUEUED, 0), (lpb.RETRYING, 1), (lpb.RETRYING, 2),
                            (lpb.RETRYING, 3), (lpb.DEAD, 4)]
        assert "503" in (await s.log("sub-r"))[0].error
        # A receiver that recovers gets nothing more: the message is dead, not queued.
        http.status = 200
        await s.lc.send_due()
        assert len(http.on("/hook")) == 4


# --- timed transitions, the engine's answers, the forfeit ---------------------------------


async def test_grace_suspended_terminated_on_time_then_service_is_denied_and_books_balance(
        config, http, clock):
    settings = parse_settings(lifecycle_table(http, rules=[
        {"name": "state", "event": "STATE_CHANGED", "channels": ["webhook"], "critical": True,
         "templates": text("Your line is now $state.")}]))
    p = plan(grace_days=7, retention_days=30, rates=[data_rate(), data_rate(
        rating_group=30, zero_rated=True, price_micros=0)],
        bundles=[ppb.BundleTemplate(bucket_id="free-sms", rating_groups=[99],
                                    unit_type=com.SERVICE_UNITS, units=10)])
    async with start(config, settings, clock) as s:
        await account(s, "sub-t", money=2 * EUR, plan_msg=p)
        sub = "sub-t"

        async def charge(session: str, rn: int, kind: int, rg: int = DATA_RG,
                         used: int | None = None, want: int | None = 0) -> cpb.ChargeAnswer:
            return await s.gw.charge(request(session, rn, kind, sub,
                                             mscc(rg, used=used, want=want)))

        # 2.00 buys 2 MB; the next grant is refused: credit exhausted -> GRACE.
        a = await charge("s1", 0, cpb.INITIAL)
        assert a.grants[0].granted.total_octets == 2 * MB
        a = await charge("s1", 1, cpb.UPDATE, used=2 * MB)
        assert a.grants[0].result == cpb.CREDIT_LIMIT_REACHED
        await eventually(lambda: _is(s, sub, com.GRACE), what="GRACE")
        entered = clock.ms
        await eventually(lambda: _timers(s, {f"{sub}|SUSPENDED": entered + 7 * DAY_MS}))
        # Each state's message is sent before the clock jumps on: the lifecycle sends no
        # message for an event older than max_event_age_s when it handles it, and it sets
        # the next timer before it sends.
        await eventually(lambda: len(http.on("/hook")) == 1, what="the GRACE message")

        # In GRACE: zero-rated service only.
        free = await charge("s2", 0, cpb.INITIAL, rg=30)
        paid = await charge("s3", 0, cpb.INITIAL)
        assert (free.grants[0].result, paid.grants[0].result) == (
            cpb.SUCCESS, cpb.END_USER_SERVICE_DENIED)

        # A minute before the grace period ends nothing happens; at its end: SUSPENDED.
        clock.ms = entered + 7 * DAY_MS - 60_000
        assert await s.lc.run_timers() == 0
        clock.ms = entered + 7 * DAY_MS
        await eventually(lambda: _is(s, sub, com.SUSPENDED), what="SUSPENDED")
        denied = await charge("s4", 0, cpb.INITIAL, rg=30)
        assert denied.result == cpb.END_USER_SERVICE_DENIED
        assert "SUSPENDED" in denied.error_message
        await eventually(lambda: _timers(s, {f"{sub}|TERMINATED": entered + 37 * DAY_MS}))
        await eventually(lambda: len(http.on("/hook")) == 2, what="the SUSPENDED message")

        # 30 days later: TERMINATED; the free SMS left are forfeited with a record.
        clock.ms = entered + 37 * DAY_MS
        await eventually(lambda: _is(s, sub, com.TERMINATED), what="TERMINATED")
        denied = await charge("s5", 0, cpb.INITIAL, rg=30)
        assert denied.result == cpb.END_USER_SERVICE_DENIED

        # The forfeit follows the state change (a step of its own, completed again if the
        # lifecycle crashed between the two).
        async def forfeited() -> bool:
            acct = await s.gw.account("a1")
            return [(b.bucket_id, b.remaining) for b in acct.buckets] == [("free-sms", 0)]
        await eventually(forfeited, what="the forfeit")
        acct = await s.gw.account("a1")
        records = await s.app.store.usage_records(acct.partition)
        [forfeit] = [r for _, r in records if r.kind == usage_pb2.FORFEIT]
        assert (forfeit.account_id, forfeit.subscriber_id, forfeit.money_micros) == (
            "a1", sub, 0)
        assert [(c.bucket_id, c.units) for c in forfeit.charges] == [("free-sms", 10)]
        assert await s.lc.states.due_timers() == {}
        report = reconcile(config.redis_url, "a1", progress=False)
        assert report.ok, report.lines()

        await eventually(lambda: len(http.on("/hook")) == 3, what="three state messages")
        states = [h.json()["text"] for h in http.on("/hook")]
        assert states == ["Your line is now GRACE.", "Your line is now SUSPENDED.",
                          "Your line is now TERMINATED."]


async def test_termination_forfeits_money_with_a_record_and_reconcile_still_balances(
        config, http, clock):
    settings = parse_settings(lifecycle_table(http))
    async with start(config, settings, clock) as s:
        await account(s, "sub-f", money=7 * EUR)
        a = await s.gw.charge(request("s1", 0, cpb.EVENT, "sub-f", mscc(DATA_RG, used=MB)))
        assert a.charged_micros == EUR
        await s.gw.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id="sub-f",
                                                                  state=com.TERMINATED))

        async def forfeited() -> bool:
            return (await s.gw.account("a1")).money_micros == 0
        await eventually(forfeited, what="the forfeit")
        acct = await s.gw.account("a1")
        records = [r for _, r in await s.app.store.usage_records(acct.partition)]
        assert [(r.kind, r.money_micros) for r in records] == [
            (usage_pb2.USAGE, EUR), (usage_pb2.FORFEIT, 6 * EUR)]
        report = reconcile(config.redis_url, progress=False)
        assert report.ok, report.lines()
        # Handling the termination again (a redelivery) forfeits nothing more.
        assert not await s.lc.states.forfeit("a1", "sub-f", clock.ms)


async def test_the_plan_expires_validity_days_after_activation_then_a_top_up_renews_it(
        config, http, clock):
    settings = parse_settings(lifecycle_table(http, rules=[]))
    async with start(config, settings, clock) as s:
        await s.gw.provisioning.PutPlan(plan(validity_days=30, grace_days=7))
        await s.gw.provisioning.CreateAccount(ppb.CreateAccountRequest(
            account_id="a1", plan_id="p", initial_money_micros=5 * EUR))
        await s.gw.provisioning.CreateSubscriber(ppb.Subscriber(
            subscriber_id="sub-v", account_id="a1", state=com.PREACTIVE))

        # The first use activates the line; the plan is valid for 30 days from then.
        used = await s.gw.charge(request("e1", 0, cpb.EVENT, "sub-v", mscc(DATA_RG, used=1000)))
        assert used.result == cpb.SUCCESS
        activated = clock.ms
        await eventually(lambda: _is(s, "sub-v", com.ACTIVE), what="ACTIVE")
        await eventually(lambda: _timers(s, {"sub-v|GRACE": activated + 30 * DAY_MS}))

        # A minute early nothing happens; then the plan has expired: GRACE, paid service
        # refused, and the grace period runs.
        clock.ms = activated + 30 * DAY_MS - 60_000
        assert await s.lc.run_timers() == 0
        clock.ms = activated + 30 * DAY_MS
        await eventually(lambda: _is(s, "sub-v", com.GRACE), what="GRACE")
        await eventually(lambda: _timers(s, {"sub-v|SUSPENDED": clock.ms + 7 * DAY_MS}))
        paid = await s.gw.charge(request("s2", 0, cpb.INITIAL, "sub-v", mscc(DATA_RG, want=0)))
        assert paid.grants[0].result == cpb.END_USER_SERVICE_DENIED

        # A top-up returns the line to ACTIVE with a new validity period (and no grace timer).
        await s.gw.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="a1",
                                                       amount_micros=EUR))
        await eventually(lambda: _is(s, "sub-v", com.ACTIVE), what="ACTIVE again")

        async def renewed() -> bool:
            return list(await s.lc.states.due_timers()) == ["sub-v|GRACE"]
        await eventually(renewed, what="a new validity timer")


async def test_a_top_up_of_a_line_the_lifecycle_has_not_seen_returns_it_to_active(
        config, http, clock, caplog):
    settings = parse_settings(lifecycle_table(http, rules=[
        {"name": "topped-up", "event": "TOPPED_UP", "channels": ["webhook"],
         "templates": text("$money EUR added")}]))
    caplog.set_level(logging.INFO, "tollgate.lifecycle")
    async with start(config, settings, clock) as s:
        await s.gw.provisioning.PutPlan(plan())
        await s.gw.provisioning.CreateAccount(ppb.CreateAccountRequest(
            account_id="a1", plan_id="p", initial_money_micros=0))
        # A new line in GRACE: no usage, no state change, nothing the lifecycle has seen.
        await s.gw.provisioning.CreateSubscriber(ppb.Subscriber(
            subscriber_id="sub-new", account_id="a1", state=com.GRACE))

        await s.gw.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="a1",
                                                       amount_micros=2 * EUR))

        await eventually(lambda: _is(s, "sub-new", com.ACTIVE), what="ACTIVE")
        [hit] = await eventually(lambda: http.on("/hook"), what="the top-up message")
        assert (hit.json()["subscriber_id"], hit.json()["text"]) == ("sub-new",
                                                                     "2.00 EUR added")

        async def sent() -> list[lpb.Notification]:
            return [n for n in await s.log("sub-new") if n.status == lpb.SENT]
        [entry] = await eventually(sent, what="the delivery log entry")
        assert entry.rule == "topped-up"
        assert any(r.getMessage() == "subscriber state changed"
                   and getattr(r, "subscriber", "") == "sub-new" for r in caplog.records)


async def _is(s: Setup, sub: str, state: int) -> bool:
    return await s.state(sub) == state


async def _timers(s: Setup, want: dict[str, int]) -> bool:
    return await s.lc.states.due_timers() == want


# --- campaigns --------------------------------------------------------------------------------


async def test_inactivity_campaign_targets_its_segment_once(config, http, clock):
    settings = parse_settings(lifecycle_table(http, campaign_interval_s=3600, campaigns=[
        {"name": "win-back", "signal": "inactivity", "days": 30, "channels": ["webhook"],
         "segment": {"plans": ["p"], "states": ["ACTIVE"], "max_spent": "5.00"},
         "templates": text("We miss you, $subscriber.")}]))
    async with start(config, settings, clock) as s:
        await account(s, "sub-c1", account_id="c1")
        await account(s, "sub-c2", account_id="c2")  # will spend too much for the segment
        await account(s, "sub-c3", account_id="c3")  # never used the service: no signal
        await s.gw.charge(request("x1", 0, cpb.EVENT, "sub-c1", mscc(DATA_RG, used=MB)))
        await s.gw.charge(request("x2", 0, cpb.EVENT, "sub-c2", mscc(DATA_RG, used=5 * MB)))
        await eventually(lambda: s.app.store.redis.exists("tg:lc:act:sub-c2"))
        assert await s.lc.campaigns.run(clock.ms + 29 * DAY_MS) == 0
        clock.ms += 31 * DAY_MS
        assert await s.lc.campaigns.run(clock.ms) == 1
        assert await s.lc.campaigns.run(clock.ms + DAY_MS) == 0  # once per idle spell
        await eventually(lambda: http.on("/hook"), what="the win-back message")
        [hit] = http.on("/hook")
        assert (hit.json()["campaign"], hit.json()["text"]) == (
            "win-back", "We miss you, sub-c1.")
        # The process's own pass took this interval's lease: other processes skip it.
        assert 0 < await s.app.store.redis.pttl(keys.LC_CAMPAIGN_LEASE) <= 3_600_000


# --- the Lifecycle API ------------------------------------------------------------------------


async def test_preferences_are_checked_and_stored(config, http, clock):
    async with start(config, parse_settings(lifecycle_table(http)), clock) as s:
        await account(s, "sub-p")
        prefs = lpb.Preferences(subscriber_id="sub-p", email="p@example.net",
                                preferred_channel="email", opt_outs=["sms", "campaigns"],
                                timezone="Europe/Amsterdam", locale="nl")
        assert await s.api.SetPreferences(prefs) == lpb.Preferences(
            subscriber_id="sub-p", email="p@example.net", preferred_channel="email",
            opt_outs=["campaigns", "sms"], timezone="Europe/Amsterdam", locale="nl")
        for bad, words in ((lpb.Preferences(subscriber_id="sub-p", preferred_channel="fax"),
                            "preferred_channel"),
                           (lpb.Preferences(subscriber_id="sub-p", opt_outs=["pigeon"]),
                            "opt_outs"),
                           (lpb.Preferences(subscriber_id="sub-p", timezone="Mars/Base"),
                            "time zone")):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await s.api.SetPreferences(bad)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in e.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.api.SetPreferences(lpb.Preferences(subscriber_id="nobody"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.api.ListNotifications(lpb.ListNotificationsRequest(subscriber_id=""))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await s.log("sub-p") == []


async def test_an_event_older_than_max_event_age_moves_states_but_sends_nothing(
        config, http):
    settings = parse_settings(lifecycle_table(http, max_event_age_s=3600, rules=[
        {"name": "grace", "event": "STATE_CHANGED", "channels": ["webhook"],
         "templates": text("$state")}]))
    later = FakeClock(wall_clock_ms() + 2 * 3_600_000)  # the lifecycle runs two hours late
    async with start(config, settings, later) as s:
        await account(s, "sub-o", plan_msg=plan(grace_days=1))
        await s.gw.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id="sub-o",
                                                                  state=com.GRACE))
        timers = await eventually(s.lc.states.due_timers, what="the grace timer")
        assert list(timers) == ["sub-o|SUSPENDED"]
        stream = keys.events_stream(keys.partition_of("a1", config.partitions))

        async def acked() -> bool:  # the event was handled to its end
            [group] = await s.app.store.redis.xinfo_groups(stream)
            return group["pending"] == 0 and group["lag"] == 0
        await eventually(acked, what="the event acknowledged")
        await s.lc.send_due()
        assert http.hits == [] and await s.log("sub-o") == []
