"""Re-rating stored usage after a price change: adjustments add up to exactly the difference,
balances follow atomically, a re-run is a no-op, and the books still reconcile."""

from __future__ import annotations

import asyncio

from tests.helpers import DATA_RG, EUR, MB, SMS_RG, VOICE_RG, data_rate, request, sample_plan
from tests.integration.ledger import (
    Tariff,
    Traffic,
    get_accounts,
    money_only,
    provision,
    run_lane,
    usage_records,
)
from tollgate.engine.billing.reconcile import reconcile
from tollgate.engine.billing.rerate import rerate
from tollgate.engine.ops.cli import main
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_client import connect
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb
from tollgate.v1 import usage_pb2


def repriced(plan: ppb.Plan, factor: dict[int, float]) -> ppb.Plan:
    out = ppb.Plan()
    out.CopyFrom(plan)
    for r in out.rates:
        r.price_micros = int(r.price_micros * factor.get(r.rating_group, 1))
    return out


def money_part(r: usage_pb2.RatedUsage) -> int:
    return sum(c.units for c in r.charges if not c.bucket_id)


async def drive(gateway, subscribers: dict[str, str], plan: ppb.Plan, seed: int,
                prefix: str = "") -> None:
    traffic = Traffic(seed, subscribers, Tariff(plan), overage=True, prefix=prefix)
    await asyncio.gather(*(run_lane(traffic, gateway.batch, f"{prefix}l{k}", 40, 8)
                           for k in range(2)))
    assert not traffic.problems, traffic.problems[:5]


async def traffic_on(gateway, plan: ppb.Plan, seed: int) -> tuple[list[str], dict[str, str]]:
    subscribers = await provision(gateway.provisioning, plan, accounts=3,
                                  subscribers_per_account=2, money=50 * EUR, credit_limit=EUR)
    await drive(gateway, subscribers, plan, seed)
    return sorted(set(subscribers.values())), subscribers


async def test_rerate_after_a_price_change(gateway, redis_url, capsys):
    plan = money_only(sample_plan(), "flat")
    accounts, subscribers = await traffic_on(gateway, plan, seed=3)
    before = await get_accounts(gateway.provisioning, accounts)
    usage = [r for r in await usage_records(redis_url)
             if r.kind == usage_pb2.USAGE and r.plan_id == "flat"]
    assert len(usage) > 50

    v2 = repriced(plan, {DATA_RG: 1.3, VOICE_RG: 0.9, SMS_RG: 2})
    assert (await gateway.provisioning.PutPlan(v2)).version == 2
    new = Tariff(v2)
    want_new = sum(new.price(r.rating_group, r.zone, money_part(r)) for r in usage)
    want_old = sum(r.money_micros for r in usage)
    want_delta = {a: 0 for a in accounts}
    for r in usage:
        want_delta[r.account_id] += new.price(r.rating_group, r.zone, money_part(r)) \
            - r.money_micros

    rep = await asyncio.to_thread(rerate, redis_url, plan_id="flat", progress=False)
    assert not rep.problems
    # A report the session's earlier billed units covered has no money part to re-rate.
    assert (rep.plan_version, rep.candidates) == (2, sum(money_part(r) > 0 for r in usage))
    assert (rep.old_micros, rep.new_micros) == (want_old, want_new)
    assert rep.delta_micros == want_new - want_old != 0
    assert rep.adjustments + rep.unchanged == sum(money_part(r) > 0 for r in usage)

    # The adjustment records: one per changed record, referencing it, summing to the difference.
    records = await usage_records(redis_url)
    adj = [r for r in records if r.kind == usage_pb2.ADJUSTMENT]
    assert len(adj) == rep.adjustments
    assert sum(r.money_micros for r in adj) == want_new - want_old
    ids = {(r.account_id, r.record_id): r for r in usage}  # ids are per partition stream
    for r in adj:
        orig = ids[(r.account_id, r.adjusts_record_id)]
        assert (r.session_id, r.request_number, r.rating_group, r.account_id) == (
            orig.session_id, orig.request_number, orig.rating_group, orig.account_id)
        assert r.rerated_plan_version == 2 and r.plan_id == "flat"
        assert r.money_micros == new.price(orig.rating_group, orig.zone, money_part(orig)) \
            - orig.money_micros
    # The originals are untouched.
    assert [r for r in records if r.kind == usage_pb2.USAGE and r.plan_id == "flat"] == usage

    # Balances moved by exactly the adjustments, and the books reconcile.
    after = await get_accounts(gateway.provisioning, accounts)
    for a in accounts:
        assert before[a].money_micros - after[a].money_micros == want_delta[a]
        assert after[a].reserved_micros == before[a].reserved_micros
    report = await asyncio.to_thread(reconcile, redis_url, progress=False)
    assert report.ok, report.lines()

    # Re-running the same re-rate is a no-op (through the CLI this time).
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["rerate", "--plan", "flat", "--plan-version", "2",
                                          "--from", "0", "--redis-url", redis_url,
                                          "--no-progress"])
    assert code == 0
    assert "wrote 0 adjustments, total 0 micros" in capsys.readouterr().out
    assert len([r for r in await usage_records(redis_url)
                if r.kind == usage_pb2.ADJUSTMENT]) == len(adj)
    assert {a: x.money_micros for a, x in
            (await get_accounts(gateway.provisioning, accounts)).items()} == {
        a: x.money_micros for a, x in after.items()}

    # Charging goes on after the balance changed under the cache (the version moved).
    last_ms = max(int(r.record_id.split("-")[0]) for r in records)
    await asyncio.sleep(0.01)
    await drive(gateway, subscribers, v2, seed=4, prefix="m")
    report = await asyncio.to_thread(reconcile, redis_url, progress=False)
    assert report.ok, report.lines()

    # A third version: priced against the effective (re-rated) price, not the original.
    v3 = repriced(plan, {DATA_RG: 0.5})
    assert (await gateway.provisioning.PutPlan(v3)).version == 3
    one = accounts[0]
    rep3 = await asyncio.to_thread(rerate, redis_url, account=one, plan_id="flat",
                                   to_ms=last_ms + 1,
                                   progress=False)
    mine = [r for r in usage if r.account_id == one]
    t3 = Tariff(v3)
    assert rep3.new_micros == sum(t3.price(r.rating_group, r.zone, money_part(r)) for r in mine)
    assert rep3.old_micros == sum(new.price(r.rating_group, r.zone, money_part(r))
                                  for r in mine)
    report = await asyncio.to_thread(reconcile, redis_url, progress=False)
    assert report.ok, report.lines()


async def test_rerate_keeps_bucket_units_and_respects_the_period(gateway, redis_url):
    plan = sample_plan("bund")
    accounts, _ = await traffic_on(gateway, plan, seed=5)
    usage = [r for r in await usage_records(redis_url) if r.kind == usage_pb2.USAGE]
    assert any(c.bucket_id for r in usage for c in r.charges)
    ms = sorted(int(r.record_id.split("-")[0]) for r in usage)
    cut = ms[len(ms) // 2]
    v2 = repriced(plan, {DATA_RG: 3, VOICE_RG: 3, SMS_RG: 3})
    await gateway.provisioning.PutPlan(v2)
    before = await get_accounts(gateway.provisioning, accounts)
    rep = await asyncio.to_thread(rerate, redis_url, plan_id="bund", from_ms=cut,
                                  progress=False)
    inside = [r for r in usage if int(r.record_id.split("-")[0]) >= cut
              and money_part(r) > 0]
    assert rep.candidates == len(inside)
    new = Tariff(v2)
    assert rep.delta_micros == sum(new.price(r.rating_group, r.zone, money_part(r))
                                   - r.money_micros for r in inside)
    after = await get_accounts(gateway.provisioning, accounts)
    for a in accounts:
        assert [(b.remaining, b.reserved) for b in after[a].buckets] == [
            (b.remaining, b.reserved) for b in before[a].buckets]
    report = await asyncio.to_thread(reconcile, redis_url, progress=False)
    assert report.ok, report.lines()
    # The markers live next to the account, in its partition.
    client = connect(redis_url)
    a = inside[0].account_id
    p = keys.partition_of(a, 8)
    assert client.hexists(f"tg:{{p{p}}}:rerate:{a}", f"{inside[0].record_id}@bund:2")
    client.close()


async def test_rerate_prices_a_zone_without_a_rate_at_home_when_the_plan_falls_back(
        gateway, redis_url):
    plan = ppb.Plan(plan_id="fallback", rates=[data_rate()], zone_fallback_home=True)
    [sub] = await gateway.setup(plan=plan)
    used = cpb.Units(total_octets=2 * MB)
    for n, kind in enumerate((cpb.INITIAL, cpb.TERMINATION)):
        a = await gateway.charge(request("s1", n, kind, sub, cpb.ServiceUnits(
            rating_group=DATA_RG, used=used if n else None), zone="roam-us"))
        assert a.result == cpb.SUCCESS, a
    plan.rates[0].price_micros = 3000  # 3.00 per MB in version 2
    await gateway.provisioning.PutPlan(plan)

    rep = await asyncio.to_thread(rerate, redis_url, plan_id="fallback", progress=False)

    assert (rep.candidates, rep.unrated, rep.adjustments) == (1, 0, 1)
    assert (rep.old_micros, rep.new_micros) == (2 * EUR, 6 * EUR)
    [adj] = [r for r in await usage_records(redis_url) if r.kind == usage_pb2.ADJUSTMENT]
    assert (adj.zone, adj.money_micros, adj.price_micros) == ("roam-us", 4 * EUR, 3000)
