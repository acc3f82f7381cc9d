"""A subscriber's month as the lifecycle sees it, over the real gRPC API, a real Redis, a
local webhook / SMS receiver and a local SMTP server: first use activates the line, the bundle
crosses 50 / 80 / 100 % (the 80 % message offers an add-on, which is then bought), the money
runs out with final units, the line goes into GRACE, a top-up brings it back. Redelivered
events send nothing twice."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from tests.helpers import DATA_RG, EUR, MB, Gateway, data_rate, mscc, request
from tests.integration.receivers import (
    SECRET,
    FakeClock,
    HttpReceiver,
    SmtpReceiver,
    eventually,
    lifecycle_table,
)
from tollgate.engine.lifecycle.channels import MESSAGE_ID_HEADER, SIGNATURE_HEADER, sign
from tollgate.engine.lifecycle.offers import offer_stats
from tollgate.engine.lifecycle.process import Lifecycle
from tollgate.engine.lifecycle.settings import parse_settings
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_client import connect_async
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import lifecycle_pb2 as lpb
from tollgate.v1 import lifecycle_pb2_grpc
from tollgate.v1 import provisioning_pb2 as ppb

SUB = "+31600000001"
NOON = 1_705_492_800_000  # Wednesday 17 January 2024 12:00 UTC

RULES = [
    {"name": "activated", "event": "STATE_CHANGED", "states": ["ACTIVE"],
     "channels": ["preferred"],
     "templates": {"en": {"subject": "Welcome", "text": "Your line $subscriber is active."},
                   "nl": {"subject": "Welkom", "text": "Uw lijn $subscriber is actief."}}},
    {"name": "bundle", "event": "BUCKET_USED", "thresholds": [50, 100],
     "channels": ["webhook", "preferred"],
     "templates": {"en": {"subject": "$threshold% used", "text": "$threshold% of $bucket"},
                   "nl": {"subject": "$threshold% verbruikt",
                          "text": "U heeft $threshold% van $bucket verbruikt."}}},
    {"name": "bundle-80", "event": "BUCKET_USED", "thresholds": [80], "offer": True,
     "channels": ["webhook", "preferred"],
     "templates": {"nl": {"subject": "80% verbruikt",
                          "text": "Nog 20% over. Koop meer:\n$offers"}}},
    {"name": "final-units", "event": "FINAL_UNITS", "critical": True,
     "channels": ["sms", "webhook"],
     "templates": {"en": {"text": "Last units: top up at the portal."}}},
    {"name": "grace", "event": "STATE_CHANGED", "states": ["GRACE"], "critical": True,
     "channels": ["preferred"],
     "templates": {"en": {"subject": "Credit used up", "text": "Only free services now."}}},
    {"name": "topped-up", "event": "TOPPED_UP", "channels": ["webhook"],
     "templates": {"en": {"text": "Topped up $money $currency."}}},
]


@pytest.fixture
def http() -> AsyncIterator[HttpReceiver]:
    r = HttpReceiver()
    yield r
    r.stop()


@pytest.fixture
def smtp() -> AsyncIterator[SmtpReceiver]:
    r = SmtpReceiver()
    yield r
    r.stop()


def unfold(header: object) -> str:
    return str(header).replace("\r\n", "").strip()


def delivered(http: HttpReceiver, smtp: SmtpReceiver) -> list[tuple[str, str]]:
    """(channel, message id) of everything that arrived, in order."""
    out = [("webhook", h.headers[MESSAGE_ID_HEADER]) for h in http.on("/hook")]
    out += [("sms", h.headers[MESSAGE_ID_HEADER]) for h in http.on("/sms")]
    out += [("email", unfold(m[MESSAGE_ID_HEADER])) for m in smtp.messages]
    return out


async def test_a_month_of_notifications(config: Config, http, smtp):
    clock = FakeClock(NOON)
    config = config.replace(subscriber_cache_s=0.0)
    settings = parse_settings(lifecycle_table(http, smtp, RULES, quiet_hours="22:00-07:00"))
    plan = ppb.Plan(
        plan_id="m50", name="Monthly 50 MB", rates=[data_rate(validity_time_s=3600)],
        bundles=[ppb.BundleTemplate(bucket_id="data-50mb", rating_groups=[DATA_RG],
                                    unit_type=com.OCTETS, units=50 * MB)],
        final_unit=cpb.FinalUnitIndication(action=cpb.REDIRECT,
                                           redirect_url="https://topup.example.net/"),
        addons=[ppb.AddOn(addon_id="extra-1gb", name="1 GB extra", price_micros=2 * EUR,
                          bundle=ppb.BundleTemplate(bucket_id="extra", rating_groups=[DATA_RG],
                                                    unit_type=com.OCTETS, units=1000 * MB))],
        grace_days=7, retention_days=30)
    async with Tollgate(config, clock=clock) as app, \
            grpc.aio.insecure_channel(app.address) as channel, \
            Lifecycle(config, settings, clock) as lc:
        gw = Gateway(channel)
        api = lifecycle_pb2_grpc.LifecycleStub(channel)
        await gw.provisioning.PutPlan(plan)
        await gw.provisioning.CreateAccount(ppb.CreateAccountRequest(
            account_id="anna", plan_id="m50", initial_money_micros=5 * EUR))
        await gw.provisioning.CreateSubscriber(ppb.Subscriber(
            subscriber_id=SUB, account_id="anna", state=com.PREACTIVE))
        await api.SetPreferences(lpb.Preferences(
            subscriber_id=SUB, email="anna@example.net", phone="+31600000001",
            locale="nl", preferred_channel="email"))
        rn = 0

        async def send(kind: int, used: int | None, want: int | None = 0) -> cpb.ChargeAnswer:
            nonlocal rn
            a = await gw.charge(request("s1", rn, kind, SUB, mscc(DATA_RG, used=used,
                                                                  want=want)))
            rn += 1
            return a

        # 10 MB quotas over a 50 MB bundle (reservations count): 20, 40, 60 (50 %), 80, 100 %.
        await send(cpb.INITIAL, None)
        for _ in range(4):
            await send(cpb.UPDATE, 10 * MB)
        # The bundle is used up; 5.00 buys the last 5 MB, with the final-unit redirect.
        last = await send(cpb.UPDATE, 10 * MB)
        assert last.grants[0].HasField("final_unit")
        refused = await send(cpb.UPDATE, 5 * MB)
        assert refused.grants[0].result == cpb.CREDIT_LIMIT_REACHED

        cycle = (await gw.account("anna")).cycle_start_ms
        expected = [
            ("email", f"activated:state:{SUB}:ACTIVE:first-use:{SUB}:email"),
            ("webhook", f"bundle:bucket:anna:data-50mb:{cycle}:50:{SUB}:webhook"),
            ("email", f"bundle:bucket:anna:data-50mb:{cycle}:50:{SUB}:email"),
            ("webhook", f"bundle-80:bucket:anna:data-50mb:{cycle}:80:{SUB}:webhook"),
            ("email", f"bundle-80:bucket:anna:data-50mb:{cycle}:80:{SUB}:email"),
            ("webhook", f"bundle:bucket:anna:data-50mb:{cycle}:100:{SUB}:webhook"),
            ("email", f"bundle:bucket:anna:data-50mb:{cycle}:100:{SUB}:email"),
            ("sms", f"final-units:final:s1:5:{DATA_RG}:{SUB}:sms"),
            ("webhook", f"final-units:final:s1:5:{DATA_RG}:{SUB}:webhook")]
        await eventually(lambda: len(delivered(http, smtp)) >= len(expected) + 1 and any(
            m.startswith("grace:") for _, m in delivered(http, smtp)),
            what="the story's messages")
        got = delivered(http, smtp)
        grace = [m for m in got if m[1].startswith("grace:")]
        assert grace == [("email", grace[0][1])]
        assert sorted(set(got) - set(grace)) == sorted(expected)
        assert (await gw.provisioning.GetSubscriber(
            ppb.GetSubscriberRequest(subscriber_id=SUB))).state == com.GRACE

        # Webhooks are signed; the 80 % one offers the plan's add-on, in Dutch.
        for hit in http.on("/hook"):
            assert hit.headers[SIGNATURE_HEADER] == sign(SECRET, hit.body)
        [offer_hit] = [h for h in http.on("/hook") if h.json()["rule"] == "bundle-80"]
        offer = offer_hit.json()
        assert offer["addon_ids"] == ["extra-1gb"]
        assert "1 GB extra: 2.00 EUR" in offer["text"]
        assert offer["text"].startswith("Nog 20% over.")
        [mail_50] = [m for m in smtp.messages
                     if unfold(m[MESSAGE_ID_HEADER]).startswith("bundle:")
                     and ":50:" in unfold(m[MESSAGE_ID_HEADER])]
        assert (mail_50["To"], mail_50["Subject"]) == ("anna@example.net", "50% verbruikt")
        [sms] = http.on("/sms")
        assert sms.path == "/sms?to=%2B31600000001"
        assert sms.json() == {"to": "+31600000001",
                              "text": "Last units: top up at the portal."}

        # Nothing is left but the grace; a top-up brings the line back to ACTIVE.
        await gw.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="anna",
                                                     amount_micros=10 * EUR))

        async def active() -> bool:
            s = await gw.provisioning.GetSubscriber(ppb.GetSubscriberRequest(subscriber_id=SUB))
            return s.state == com.ACTIVE
        await eventually(active, what="reactivation")
        await eventually(lambda: len(delivered(http, smtp)) >= len(got) + 2,
                         what="top-up and reactivation messages")
        new = set(delivered(http, smtp)) - set(got)
        assert sorted(c for c, _ in new) == ["email", "webhook"]
        assert any(m.startswith("topped-up:topup:anna:t1:") for _, m in new)
        assert any(m.startswith(f"activated:state:{SUB}:ACTIVE:topup:anna:t1:") for _, m in new)
        assert await lc.states.due_timers() == {}  # the grace timer went with the grace

        # The offer is taken: the add-on is bought with the offer id; conversion counted.
        bought = await gw.provisioning.BuyAddOn(ppb.BuyAddOnRequest(
            order_id="o1", account_id="anna", addon_id="extra-1gb",
            offer_id=offer["offer_id"]))
        assert bought.applied
        await gw.provisioning.BuyAddOn(ppb.BuyAddOnRequest(
            order_id="o1", account_id="anna", addon_id="extra-1gb",
            offer_id=offer["offer_id"]))  # a retried purchase counts once
        assert await offer_stats(lc.store.redis) == {"made": 1, "bought": 1,
                                                      "bought:extra-1gb": 1,
                                                      "revenue": 2 * EUR}

        # Every event delivered again (the group rewound): nothing is sent twice.
        await eventually(lambda: len(delivered(http, smtp)) >= len(got) + 2)
        before = len(delivered(http, smtp))
        seen_before = set(delivered(http, smtp))
        db = connect_async(config.redis_url)
        p = keys.partition_of("anna", config.partitions)
        await db.xgroup_setid(keys.events_stream(p), "lifecycle", "0")
        await eventually(lambda: _all_acked(db, p), what="the redelivered events handled")
        assert len(delivered(http, smtp)) == before, set(delivered(http, smtp)) - seen_before
        assert len(set(delivered(http, smtp))) == before  # and none arrived twice before
        await db.aclose()

        # The delivery log, newest first, through the API.
        log = (await api.ListNotifications(lpb.ListNotificationsRequest(
            subscriber_id=SUB, limit=1000))).notifications
        sent = [n for n in log if n.status == lpb.SENT]
        assert len(sent) == before
        assert {n.message_id for n in sent} == {m for _, m in delivered(http, smtp)}
        assert all(n.attempts == 1 for n in sent)


async def _all_acked(db: aioredis.Redis, p: int) -> bool:
    info = await db.xinfo_groups(keys.events_stream(p))
    [group] = [g for g in info if g["name"] == b"lifecycle"]
    last = await db.xrevrange(keys.events_stream(p), count=1)
    return group["pending"] == 0 and group["last-delivered-id"] == last[0][0]
