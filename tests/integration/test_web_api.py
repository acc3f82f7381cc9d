"""The JSON behind the web pages, on a real Tollgate (Redis, gRPC, HTTP): login, the dashboard
and its live stream, the subscriber view and its actions, self-service links."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from tests.helpers import DATA_RG, MB, mscc, request
from tests.web import EUR, Site, eventually, site
from tollgate.engine.ops.config import Config
from tollgate.engine.web.aggregates import CENSUS_LEASE, census, run_census
from tollgate.v1 import charging_pb2 as cpb


async def _use(s: Site, sub: str, session: str, octets: int) -> None:
    """One data session of `octets` over gRPC (INITIAL, TERMINATION)."""
    ans = await s.gw.charge(request(session, 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    assert ans.result == cpb.SUCCESS
    ans = await s.gw.charge(request(session, 1, cpb.TERMINATION, sub,
                                    mscc(DATA_RG, used=octets)))
    assert ans.result == cpb.SUCCESS


async def test_only_operator_tokens_log_in_and_the_cookie_is_locked_down(
        config: Config, tmp_path: Path) -> None:
    async with site(config, tmp_path) as s, httpx.AsyncClient(base_url=s.url) as anon:
        assert (await anon.get("/api/dashboard")).status_code == 401
        page = await anon.get("/dashboard")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert (await anon.post("/login", json={"token": "tgk_wrong"})).status_code == 401
        r = await anon.post("/login", json={"token": s.operator_token})
        assert r.status_code == 200 and r.json() == {"operator": "care-desk"}
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
        # A forged cookie (someone else's name, same signature) is no session.
        value = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        forged = value[:5] + ("A" if value[5] != "A" else "B") + value[6:]
        bad = await anon.get("/api/me", headers={"cookie": f"tg_session={forged}"})
        assert bad.status_code == 401


async def test_dashboard_counts_charging_and_streams_updates(config: Config,
                                                             tmp_path: Path) -> None:
    async with site(config, tmp_path) as s:
        subs = await s.gw.setup(money=10 * EUR)
        client = await s.login()
        for n in range(5):
            await _use(s, subs[0], f"d{n}", MB)

        async def answered() -> int:
            totals = (await client.get("/api/dashboard")).json()["totals"]
            return totals.get("req:success", 0) >= 10 and totals
        totals = await eventually(answered)
        assert totals["req:success"] >= 10
        assert totals.get("grant:success", 0) >= 5  # grants by result, for "refused by reason"
        d = (await client.get("/api/dashboard")).json()
        assert len(d["series"]["t"]) == 360 and d["bucket_s"] == 10
        assert any(p is not None for p in d["series"]["p50_ms"])
        assert sum(d["series"]["rate"]) > 0
        # The census runs every 0.5 s here: soon it has counted the new line.
        base = await eventually(lambda: _base(client))
        assert base["ACTIVE"] == 1
        async with client.stream("GET", "/api/dashboard/stream") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    live = json.loads(line[6:])
                    break
        assert live["totals"]["req:success"] >= 10 and len(live["series"]["t"]) == 3
        await client.aclose()


async def _base(client: httpx.AsyncClient) -> dict[str, int] | None:
    base = (await client.get("/api/dashboard")).json()["base"]
    return base if base.get("ACTIVE") else None


async def test_subscriber_view_and_actions_through_provisioning(config: Config,
                                                                tmp_path: Path) -> None:
    async with site(config, tmp_path) as s:
        subs = await s.gw.setup(money=10 * EUR)
        await _use(s, subs[0], "v1", 20 * MB)
        client = await s.login()
        found = (await client.get("/api/search", params={"q": "acct-0"})).json()["found"]
        assert found == [{"subscriber_id": subs[0], "account_id": "acct-0", "state": "ACTIVE"}]
        assert (await client.get("/api/search", params={"q": "nobody"})).json()["found"] == []
        v = (await client.get(f"/api/subscribers/{subs[0]}")).json()
        assert v["money"] == 10 * EUR and v["state"] == "ACTIVE"
        bucket = v["buckets"][0]
        assert bucket["id"] == "data-100mb" and bucket["remaining"] == 80 * MB
        assert v["records"][0]["kind"] == "USAGE" and v["records"][0]["units"] == 20 * MB
        assert "data-100mb runs out" in v["runout_line"]

        no_csrf = await client.post(f"/api/subscribers/{subs[0]}/topup",
                                    json={"amount": "5", "key": "k1"},
                                    headers={"x-csrf-token": "nope"})
        assert no_csrf.status_code == 403
        assert (await s.gw.account("acct-0")).money_micros == 10 * EUR
        top = await client.post(f"/api/subscribers/{subs[0]}/topup",
                                json={"amount": "5.50", "key": "k1"})
        assert top.json() == {"applied": True, "money": 15_500_000}
        again = await client.post(f"/api/subscribers/{subs[0]}/topup",
                                  json={"amount": "5.50", "key": "k1"})
        assert again.json() == {"applied": False, "money": 15_500_000}
        bad = await client.post(f"/api/subscribers/{subs[0]}/topup",
                                json={"amount": "lots", "key": "k2"})
        assert bad.status_code == 400 and "amount" in bad.json()["error"]
        cap = await client.post(f"/api/subscribers/{subs[0]}/cap", json={"cap": "30"})
        assert cap.json() == {"cap": 30 * EUR}
        state = await client.post(f"/api/subscribers/{subs[0]}/state",
                                  json={"state": "SUSPENDED"})
        assert state.json() == {"state": "SUSPENDED"}
        wrong = await client.post(f"/api/subscribers/{subs[0]}/state", json={"state": "GONE"})
        assert wrong.status_code == 400
        after = (await client.get(f"/api/subscribers/{subs[0]}")).json()
        assert after["money"] == 15_500_000 and after["cap"] == 30 * EUR
        assert after["state"] == "SUSPENDED"
        assert (await client.get("/api/subscribers/nobody")).status_code == 404
        await client.aclose()


async def test_self_service_link_shows_only_its_own_line(config: Config,
                                                        tmp_path: Path) -> None:
    async with site(config, tmp_path) as s:
        a, b = await s.gw.setup(money=10 * EUR, subscribers_per_account=2)
        await _use(s, a, "mine", 1 * MB)
        await _use(s, b, "theirs", 3 * MB)
        client = await s.login()
        url = (await client.post(f"/api/subscribers/{a}/link")).json()["url"]
        token = url.rsplit("/", 1)[1]
        async with httpx.AsyncClient(base_url=s.url) as visitor:  # no operator session
            assert (await visitor.get(url)).status_code == 200
            v = (await visitor.get(f"/api/self/{token}")).json()
            assert v["subscriber_id"] == a
            assert {r["subscriber_id"] for r in v["records"]} == {a}
            assert "sessions" not in v and "notifications" not in v and "events" not in v
            assert b not in json.dumps(v)
            tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
            assert (await visitor.get(f"/self/{tampered}")).status_code == 403
            assert (await visitor.get(f"/api/self/{tampered}")).status_code == 403
            # The link opens no operator page, and its CSRF token is needed to act.
            assert (await visitor.get(f"/api/subscribers/{b}")).status_code == 401
            refused = await visitor.post(f"/api/self/{token}/cap", json={"cap": "5"})
            assert refused.status_code == 403
            ok = await visitor.post(f"/api/self/{token}/cap", json={"cap": "5"},
                                    headers={"x-csrf-token": v["csrf"]})
            assert ok.json() == {"cap": 5 * EUR}
            no_state = await visitor.post(f"/api/self/{token}/state", json={"state": "ACTIVE"},
                                          headers={"x-csrf-token": v["csrf"]})
            assert no_state.status_code == 404
        await client.aclose()


async def test_census_counts_the_base_by_state(config: Config, tmp_path: Path) -> None:
    async with site(config.replace(), tmp_path) as s:
        subs = await s.gw.setup(accounts=3)
        client = await s.login()
        await client.post(f"/api/subscribers/{subs[1]}/state", json={"state": "GRACE"})
        counts = await census(s.app.store, 0)  # type: ignore[arg-type]
        assert counts["ACTIVE"] == 2 and counts["GRACE"] == 1 and counts["TERMINATED"] == 0
        await client.aclose()


async def test_the_census_loop_ends_when_told_to_stop_without_sleeping_its_interval(
        config: Config, tmp_path: Path) -> None:
    """Its server's shutdown sets the flag: a cancellation swallowed inside redis-py left the
    loop asleep for its whole interval (five minutes), and the shutdown waiting for it."""
    async with site(config.replace(), tmp_path) as s:
        store = s.app.store
        assert store is not None
        await store.redis.delete(CENSUS_LEASE)
        stopping = asyncio.Event()
        task = asyncio.create_task(run_census(store, 300.0, stopping))
        # The lease taken: a census ran (this loop's or the site's own).
        await eventually(lambda: store.redis.exists(CENSUS_LEASE))
        stopping.set()
        await asyncio.wait_for(task, 2)
