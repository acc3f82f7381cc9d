"""Usage export (CSV, Parquet; streamed, bounded memory) and reconciliation, on a real Redis.

The export test writes N records straight to the partition streams with redis-py pipelines
(N = 20 000 by default; set TOLLGATE_EXPORT_N=1000000 to run the issue's million:
`TOLLGATE_EXPORT_N=1000000 pytest tests/integration/test_export_reconcile.py -k bounded`).
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import tracemalloc

import pyarrow.parquet as pq

from tests.helpers import EUR, sample_plan
from tests.integration.ledger import Tariff, Traffic, provision, run_lane, usage_records
from tollgate.engine.billing.export import Totals, export, parse_time
from tollgate.engine.billing.reconcile import reconcile
from tollgate.engine.domain import UnitType
from tollgate.engine.ops.cli import main
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_client import connect
from tollgate.engine.storage.state import BucketMeta
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb
from tollgate.v1 import usage_pb2

PARTS = 8
BASE_MS = 1_750_000_000_000
N = int(os.environ.get("TOLLGATE_EXPORT_N", "20000"))


def fill(url: str, n: int, accounts: int = 50, seed: int = 1) -> dict[str, list[int]]:
    """n records over `accounts` synthetic accounts, record i written at BASE_MS + i (its id);
    the accounts' hashes balance them. Returns account -> [money, bucket units, records]."""
    rng = random.Random(seed)
    client = connect(url)
    client.hset(keys.META, "partitions", PARTS)
    per: dict[str, list[int]] = {f"syn-{a}": [0, 0, 0] for a in range(accounts)}
    topups: dict[str, int] = dict.fromkeys(per, 0)
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        a = f"syn-{rng.randrange(accounts)}"
        if rng.random() < 0.02:
            amount = rng.randint(1, 50) * EUR
            r = usage_pb2.RatedUsage(kind=usage_pb2.TOP_UP, account_id=a, money_micros=-amount,
                                     end_time_ms=BASE_MS + i,
                                     charges=[usage_pb2.BalanceCharge(micros=-amount)])
            topups[a] += amount
        else:
            units = rng.randint(1, 3_000_000)
            from_bucket = rng.randint(0, units) if rng.random() < 0.5 else 0
            money = (units - from_bucket + 999) // 1000 * 1000
            charges = [usage_pb2.BalanceCharge(micros=money, units=units - from_bucket)]
            if from_bucket:
                charges.insert(0, usage_pb2.BalanceCharge(bucket_id="data", units=from_bucket))
            r = usage_pb2.RatedUsage(
                kind=usage_pb2.USAGE, account_id=a, subscriber_id=f"{a}-sub",
                session_id=f"s-{i // 3}", request_number=i % 3, rating_group=10,
                unit_type=com.OCTETS, units=units, start_time_ms=BASE_MS + i - 5000,
                end_time_ms=BASE_MS + i, plan_id="syn", plan_version=1, price_micros=1000,
                increment=1000, money_micros=money, charges=charges, origin="fill")
            per[a][1] += from_bucket
        per[a][0] += r.money_micros
        per[a][2] += 1
        pipe.xadd(keys.usage_stream(keys.partition_of(a, PARTS)), {"r": r.SerializeToString()},
                  id=f"{BASE_MS + i}-0")
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    big = 10**15
    for a, (money, units, _) in per.items():
        client.hset(keys.account(keys.partition_of(a, PARTS), a), mapping={
            "ver": 1, "plan": "syn", "money": big - money, "mres": 0, "init": big,
            "topups": topups[a], "created": BASE_MS, "cs": BASE_MS,
            "b:data": BucketMeta((10,), UnitType.OCTETS, 0, 0, units + 7, False).value(),
            "b:data:rem": 7, "b:data:res": 0, "b:data:ntf": 0})
    client.close()
    return per


def peak_of(fn, *args, **kw):
    tracemalloc.start()
    try:
        result = fn(*args, **kw)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_parse_time():
    assert parse_time("1750000000000") == 1_750_000_000_000
    assert parse_time("2025-06-15T15:06:40Z") == 1_750_000_000_000
    assert parse_time("2025-06-15T17:06:40+02:00") == 1_750_000_000_000
    assert parse_time("2025-06-15 15:06:40") == 1_750_000_000_000


def test_export_is_streamed_with_bounded_memory_and_totals_add_up(redis_url, tmp_path):
    per = fill(redis_url, N)
    want_money = sum(v[0] for v in per.values())
    want_units = sum(v[1] for v in per.values())
    small = dict(chunk=500, row_group=2000, progress=False)

    totals, peak_csv = peak_of(export, redis_url, str(tmp_path / "u.csv"), "csv", **small)
    assert (totals.records, totals.money_micros, totals.bucket_units) == (N, want_money,
                                                                         want_units)
    totals_pq, peak_pq = peak_of(export, redis_url, str(tmp_path / "u.parquet"), "parquet",
                                 **small)
    assert totals_pq == totals
    # Constant memory: a tenth of the records costs about as much as all of them, and far
    # less than the records would take held in memory (about 1 kB each as messages).
    _, peak_tenth = peak_of(export, redis_url, str(tmp_path / "t.parquet"), "parquet",
                            to_ms=BASE_MS + N // 10, **small)
    assert peak_csv < 4_000_000, peak_csv
    assert peak_pq < 8_000_000, peak_pq
    assert peak_pq < 2 * peak_tenth + 1_000_000, (peak_pq, peak_tenth)

    # The files hold the records: rows and sums agree with the totals.
    with open(tmp_path / "u.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N
    assert sum(int(r["money_micros"]) for r in rows) == want_money
    assert sum(int(r["bucket_units"]) for r in rows) == want_units
    assert {r["kind"] for r in rows} == {"USAGE", "TOP_UP"}
    table = pq.read_table(tmp_path / "u.parquet")
    assert table.num_rows == N
    assert pq.ParquetFile(tmp_path / "u.parquet").metadata.num_row_groups >= N // 2000
    assert sum(table.column("money_micros").to_pylist()) == want_money
    assert sum(table.column("money_charged_micros").to_pylist()) == want_money

    # GetUsage-like per-account sums equal the export of that account.
    a = "syn-3"
    acct = export(redis_url, str(tmp_path / "a.csv"), "csv", account=a, progress=False)
    assert (acct.money_micros, acct.bucket_units, acct.records) == tuple(per[a])

    # A period: ids are BASE_MS + i, so [from, to) holds exactly to - from records.
    part = export(redis_url, str(tmp_path / "p.csv"), "csv", from_ms=BASE_MS + 100,
                  to_ms=BASE_MS + 1100, progress=False)
    assert part.records == 1000

    # The reconciliation counts the same records, and the synthetic books balance.
    report = reconcile(redis_url, progress=False)
    assert report.ok, report.lines()
    assert report.totals == totals
    assert report.accounts == len(per)


async def test_reconcile_after_random_traffic_and_a_corrupted_account(gateway, redis_url,
                                                                      tmp_path, capsys):
    plan = sample_plan("rec")
    plan.addons.append(ppb.AddOn(addon_id="extra", price_micros=2 * EUR, bundle=ppb.BundleTemplate(
        bucket_id="extra", rating_groups=[10], unit_type=com.OCTETS, units=50_000_000)))
    subscribers = await provision(gateway.provisioning, plan, accounts=4,
                                  subscribers_per_account=2, money=30 * EUR, credit_limit=EUR)
    accounts = sorted(set(subscribers.values()))
    traffic = Traffic(7, subscribers, Tariff(plan), overage=True)
    for n, a in enumerate(accounts):
        await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id=f"t{n}", account_id=a,
                                                          amount_micros=5 * EUR))
        await gateway.provisioning.BuyAddOn(ppb.BuyAddOnRequest(order_id=f"o{n}", account_id=a,
                                                                addon_id="extra"))
    lanes = asyncio.gather(*(run_lane(traffic, gateway.batch, f"l{k}", 60, 10)
                             for k in range(3)))
    # While traffic runs, each account is compared with the records up to the same instant.
    during = []
    while not lanes.done():
        during.append(await asyncio.to_thread(reconcile, redis_url, progress=False))
    await lanes
    assert not traffic.problems, traffic.problems[:5]
    assert during and all(r.ok for r in during), [r.lines() for r in during if not r.ok][:1]

    report = await asyncio.to_thread(reconcile, redis_url, progress=False)
    assert report.ok, report.lines()
    assert report.accounts == len(accounts)
    assert report.buckets_checked >= 2 * len(accounts)
    records = await usage_records(redis_url)
    want = Totals()
    for r in records:
        want.add(r)
    assert report.totals == want
    assert {"USAGE", "TOP_UP", "ADD_ON"} <= set(report.totals.kinds)
    # Export of everything: the same totals.
    exported = await asyncio.to_thread(export, redis_url, str(tmp_path / "all.parquet"),
                                       "parquet", progress=False)
    assert exported == want

    # Corrupt one account's money and another's bucket: both named, exit code 1.
    client = connect(redis_url)
    p = keys.partition_of(accounts[1], PARTS)
    client.hincrby(keys.account(p, accounts[1]), "money", 123)
    q = keys.partition_of(accounts[2], PARTS)
    client.hincrby(keys.account(q, accounts[2]), "b:data-100mb:rem", -5)
    client.close()
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["reconcile", "--redis-url", redis_url,
                                          "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{accounts[1]}: money off by 123" in out
    assert f"{accounts[2]}/data-100mb: units off by -5" in out
    assert accounts[0] + ":" not in out
    assert "2 discrepancies" in out


async def test_export_cli(gateway, redis_url, tmp_path, capsys):
    subs = await provision(gateway.provisioning, sample_plan("cli"), accounts=1,
                           subscribers_per_account=1, money=10 * EUR, credit_limit=0)
    account = next(iter(subs.values()))
    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="x", account_id=account,
                                                      amount_micros=EUR))
    out = tmp_path / "u.csv"
    code = await asyncio.to_thread(main, [
        "usage", "export", "--from", "2020-01-01T00:00:00Z", "--to", "2999-01-01",
        "--format", "csv", "--out", str(out), "--redis-url", redis_url])
    text = capsys.readouterr()
    assert code == 0
    assert "1 records, money -1000000 micros" in text.out
    assert "export [" in text.err  # the progress bar
    assert out.read_text().count("\n") == 2
