"""The segments page's JSON on a real Tollgate with a lifecycle process (Redis, gRPC, HTTP): the
lifecycle keeps each line's churn signals as it reads the streams, the background census
ranks the base, filters build a segment; an operator sends an offer to a segment (once, with
CSRF, through the lifecycle's quiet hours and dedup), the offer is bought, the survey link in
the message takes an NPS answer, and the dashboard shows the campaign's results."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import DATA_RG, MB, mscc, request
from tests.integration.receivers import HttpReceiver, eventually, lifecycle_table
from tests.web import EUR, Site, site
from tollgate.engine.lifecycle import signals
from tollgate.engine.lifecycle.process import Lifecycle
from tollgate.engine.lifecycle.settings import parse_settings
from tollgate.engine.ops.config import Config
from tollgate.engine.ops.demo import DEMO_PLAN
from tollgate.engine.storage import keys
from tollgate.engine.web import segments
from tollgate.engine.web.aggregates import census
from tollgate.engine.web.segments import Filter
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

DAY_MS = signals.DAY_MS
WINBACK = {"name": "winback", "signal": "segment", "offer": True, "channels": ["webhook"],
           "templates": {"en": {"subject": "We miss you", "text":
                                "Hello $subscriber. $offers\nYour page: $self_link"}}}


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    yield r
    r.stop()


@asynccontextmanager
async def with_lifecycle(config: Config, tmp_path: Path, http: HttpReceiver,
                         server_census_s: float = 0.5, **settings: Any
                         ) -> AsyncIterator[tuple[Site, httpx.AsyncClient]]:
    async with site(config, tmp_path, server_census_s) as s:
        table = lifecycle_table(http, campaigns=[WINBACK], self_link_url=s.url, **settings)
        async with Lifecycle(s.app.config, parse_settings(table)):
            client = await s.login()
            try:
                yield s, client
            finally:
                await client.aclose()


async def _use(s: Site, sub: str, session: str) -> None:
    ans = await s.gw.charge(request(session, 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    assert ans.result == cpb.SUCCESS
    ans = await s.gw.charge(request(session, 1, cpb.TERMINATION, sub, mscc(DATA_RG, used=MB)))
    assert ans.result == cpb.SUCCESS


async def _base(s: Site, client: httpx.AsyncClient) -> list[str]:
    """Four lines: two that used the service (one topped up), one in GRACE, one quiet for
    six weeks with no top-up for 40 days (its history written as the lifecycle keeps it)."""
    subs = await s.gw.setup(plan=DEMO_PLAN, accounts=4, money=50 * EUR)
    await _use(s, subs[0], "a")
    await _use(s, subs[1], "b")
    await s.gw.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="acct-0",
                                                   amount_micros=5 * EUR))
    assert (await client.post(f"/api/subscribers/{subs[2]}/state",
                              json={"state": "GRACE"})).status_code == 200
    redis = s.app.store.redis  # type: ignore[union-attr]
    now = int(time.time() * 1000)
    w = signals.week(now)
    await redis.hset(keys.lc_activity(subs[3]), mapping={
        signals.FIRST: now - 60 * DAY_MS, signals.LAST: now - 40 * DAY_MS,
        signals.TOPUP: now - 40 * DAY_MS, f"u{w - 5}": 500, f"u{w - 4}": 500})

    async def kept() -> bool:
        fields = await signals.read(redis, subs[:3])
        return (signals.FIRST in fields[0] and signals.TOPUP in fields[0]
                and signals.FIRST in fields[1] and signals.GRACE in fields[2])
    await eventually(kept)
    return subs


async def _segment(client: httpx.AsyncClient, params: dict[str, str], want: int
                   ) -> dict[str, Any]:
    """The segment once a census has counted `want` lines in it."""
    async def ready() -> dict[str, Any] | None:
        r = await client.get("/api/segments", params=params)
        assert r.status_code == 200, r.text
        d: dict[str, Any] = r.json()
        return d if d["count"] == want and len(d["lines"]) == min(want, d["limit"]) else None
    return await eventually(ready)


async def test_the_census_ranks_the_base_by_churn_risk_and_filters_make_a_segment(
        config: Config, tmp_path: Path, http: HttpReceiver) -> None:
    async with with_lifecycle(config, tmp_path, http) as (s, client):
        subs = await _base(s, client)
        everyone = await _segment(client, {}, 4)
        top = everyone["lines"][0]
        assert top["subscriber_id"] == subs[3] and top["activity"] == "dormant"
        assert top["band"] == "high" and top["score"] == top["census_score"] == 55
        assert [r["text"] for r in top["reasons"]] == [
            "usage this week is 0% of its four-week average", "no top-up for 40 days"]
        assert everyone["base"] == {"low": 3, "medium": 0, "high": 1}
        assert everyone["reasons_in_bands"] == {"usage": 1, "topup": 1, "grace": 1}
        assert everyone["plans"] == [DEMO_PLAN.plan_id]
        assert "winback" in everyone["campaigns"]

        grace = await _segment(client, {"states": "GRACE"}, 1)
        assert grace["lines"][0]["subscriber_id"] == subs[2]
        assert grace["lines"][0]["reasons"][0]["text"] == "in GRACE for 0 days"
        never = await _segment(client, {"activities": "never", "bands": "low"}, 1)
        assert never["lines"][0]["subscriber_id"] == subs[2]
        active = await _segment(client, {"activities": "active", "states": "ACTIVE"}, 2)
        assert {x["subscriber_id"] for x in active["lines"]} == set(subs[:2])
        second = await _segment(client, {"offset": "1", "limit": "1"}, 4)
        assert second["lines"][0]["subscriber_id"] == everyone["lines"][1]["subscriber_id"]

        bad = await client.get("/api/segments", params={"bands": "awful"})
        assert bad.status_code == 400 and "bands: awful" in bad.json()["error"]
        assert (await client.get("/api/segments", params={"limit": "5000"})).status_code == 400
        async with httpx.AsyncClient(base_url=s.url) as anon:
            assert (await anon.get("/api/segments")).status_code == 401


async def test_an_offer_sent_to_a_segment_is_sent_once_bought_and_answered(
        config: Config, tmp_path: Path, http: HttpReceiver) -> None:
    async with with_lifecycle(config, tmp_path, http) as (s, client):
        subs = await _base(s, client)
        await _segment(client, {"states": "GRACE"}, 1)
        send = {"filter": {"states": ["GRACE"]}, "campaign": "winback", "key": "k1"}
        no_csrf = await client.post("/api/segments/send", json=send,
                                    headers={"x-csrf-token": ""})
        assert no_csrf.status_code == 403
        unknown = await client.post("/api/segments/send", json={**send, "campaign": "x"})
        assert unknown.status_code == 404 and "signal = \"segment\"" in unknown.json()["error"]
        for bad in ({**send, "filter": ["GRACE"]}, {**send, "key": "k" * 101},
                    {**send, "filter": {"bands": ["awful"]}}):
            refused = await client.post("/api/segments/send", json=bad)
            assert refused.status_code == 400, refused.text
        first = await client.post("/api/segments/send", json=send)
        assert first.json() == {"job": "web-k1", "queued": True, "words": "state GRACE"}
        again = await client.post("/api/segments/send", json=send)
        assert again.json()["queued"] is False  # the same form twice: one send

        hits = await eventually(lambda: http.on("/hook"))
        msg = hits[0].json()
        assert msg["subscriber_id"] == subs[2] and msg["campaign"] == "winback"
        assert msg["offer_id"] and "1 GB extra" in msg["text"]

        async def done() -> list[dict[str, Any]] | None:
            sends = (await client.get("/api/segments")).json()["sends"]
            return sends if sends and sends[0]["status"] == "done" else None
        sent = (await eventually(done))[0]
        assert (sent["by"], sent["lines"], sent["queued"]) == ("care-desk", 1, 1)
        # A second send of the same campaign to the same segment is a new request: the
        # lines get it again; the same request never twice.
        assert len(http.on("/hook")) == 1

        # The subscriber takes the offer: a conversion with its revenue, for the campaign.
        bought = await s.gw.provisioning.BuyAddOn(ppb.BuyAddOnRequest(
            order_id="o1", account_id="acct-2", addon_id="extra-1gb",
            offer_id=msg["offer_id"]))
        assert bought.applied
        # The survey link in the message: its page, and one NPS answer per line.
        path = msg["text"].rsplit("Your page: ", 1)[1].removeprefix(s.url)
        token = path.removeprefix("/self/")
        async with httpx.AsyncClient(base_url=s.url) as visitor:
            page = (await visitor.get(f"/api/self/{token}")).json()
            assert page["subscriber_id"] == subs[2]
            answer = await visitor.post(f"/api/self/{token}/nps", json={"score": 3},
                                        headers={"x-csrf-token": page["csrf"]})
            assert answer.status_code == 200
            twice = await visitor.post(f"/api/self/{token}/nps", json={"score": 10},
                                       headers={"x-csrf-token": page["csrf"]})
            assert twice.status_code == 409
            bad = await visitor.post(f"/api/self/{token}/nps", json={"score": 11},
                                     headers={"x-csrf-token": page["csrf"]})
            assert bad.status_code == 400

        d = (await client.get("/api/dashboard")).json()
        winback = next(c for c in d["campaigns"] if c["name"] == "winback")
        assert (winback["reach"], winback["offers"], winback["bought"]) == (1, 1, 1)
        assert winback["revenue"] == 5 * EUR and d["offers"]["revenue"] == 5 * EUR
        assert winback["answers"] == 1 and winback["nps"] == -100
        assert winback["distribution"][3] == 1
        kept = (await signals.read(s.app.store.redis, [subs[2]]))[0]  # type: ignore[union-attr]
        assert kept[signals.NPS] == 3 and kept[f"b{signals.week(int(time.time() * 1000))}"] == 1


async def test_a_segment_send_waits_for_the_end_of_quiet_hours_with_the_census_elsewhere(
        config: Config, tmp_path: Path, http: HttpReceiver) -> None:
    # The census runs in the lifecycle process here, none in the web server.
    async with with_lifecycle(config, tmp_path, http, server_census_s=0, census_s=0.3,
                              quiet_hours="00:00-23:59", timezone="UTC") as (s, client):
        subs = await _base(s, client)
        await _segment(client, {"states": "GRACE"}, 1)
        r = await client.post("/api/segments/send", json={
            "filter": {"states": ["GRACE"]}, "campaign": "winback", "key": "quiet"})
        assert r.json()["queued"]

        async def deferred() -> list[dict[str, Any]] | None:
            notes = (await client.get(f"/api/subscribers/{subs[2]}")).json()["notifications"]
            return notes or None
        notes = await eventually(deferred)
        assert [n["status"] for n in notes] == ["DEFERRED"]
        assert notes[0]["due_ms"] > time.time() * 1000
        assert http.on("/hook") == []


async def test_a_segment_walk_keeps_its_census_through_a_newer_one(
        config: Config, tmp_path: Path) -> None:
    async with site(config, tmp_path, census_s=0) as s:
        subs = await s.gw.setup(plan=DEMO_PLAN, accounts=4)
        for sub in subs[:2]:
            await s.gw.provisioning.SetSubscriberState(
                ppb.Subscriber(subscriber_id=sub, state=com.GRACE))
        store = s.app.store
        assert store is not None
        now = int(time.time() * 1000)
        await census(store, now)
        first_gen, summary = await segments.current(store.redis)
        assert len(segments.known_cells((first_gen, summary))) == 2
        walk = segments.members(store.redis, Filter())
        seen = await walk.__anext__()  # the first cell; the walk has pinned its census
        await census(store, now + 1)  # a newer index: the walked one stays
        assert (await segments.current(store.redis))[0] == str(now + 1)
        seen += [sid async for chunk in walk for sid in chunk]
        assert sorted(seen) == sorted(subs)
        gens = {g.decode() for g in await store.redis.smembers(segments.GENS)}
        assert gens == {first_gen, str(now + 1)}
        await census(store, now + 2)  # the walk has ended: older generations go
        gens = {g.decode() for g in await store.redis.smembers(segments.GENS)}
        assert gens == {str(now + 2)}
        assert not await store.redis.exists(segments.cells_key(first_gen),
                                            segments.summary_key(first_gen))
