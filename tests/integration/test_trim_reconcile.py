"""Trimming acknowledged usage records keeps the books provable (carried totals)."""

from __future__ import annotations

import time

from tests.helpers import DATA_RG, MB, VOICE_RG, mscc, past_retention, request
from tollgate.engine.billing.export import export
from tollgate.engine.billing.reconcile import reconcile
from tollgate.engine.billing.rerate import rerate
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_client import connect_async
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb


async def traffic(gateway, subs):
    for n, sub in enumerate(subs):
        for k in range(3):
            sid = f"{sub}-{k}"
            await gateway.charge(request(sid, 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0),
                                         mscc(VOICE_RG, want=0, field="time_seconds")))
            await gateway.charge(request(sid, 1, cpb.UPDATE, sub, mscc(DATA_RG, used=7 * MB,
                                                                         want=0)))
            await gateway.charge(request(sid, 2, cpb.TERMINATION, sub,
                                         mscc(DATA_RG, used=(n + 1) * MB),
                                         mscc(VOICE_RG, used=61, field="time_seconds")))
        await gateway.provisioning.TopUp(ppb.TopUpRequest(
            topup_id=f"t-{n}", account_id=f"acct-{n}", amount_micros=2_000_000))


async def ack_everything(redis_url, partitions):
    r = connect_async(redis_url)
    for p in range(partitions):
        stream = keys.usage_stream(p)
        if not await r.exists(stream):
            continue
        await r.xgroup_create(stream, "billing", id="0")
        for _, entries in await r.xreadgroup("billing", "c1", {stream: ">"}, count=100_000):
            await r.xack(stream, "billing", *[eid for eid, _ in entries])
    await r.aclose()


async def test_reconcile_holds_after_acknowledged_records_are_trimmed(tollgate, gateway,
                                                                      redis_url, config):
    subs = await gateway.setup(accounts=4)
    await traffic(gateway, subs[:2])
    await ack_everything(redis_url, config.partitions)
    await traffic(gateway, subs[2:])  # not acknowledged: must stay

    report = await tollgate.billing.trim(now_ms=past_retention(config))
    after = reconcile(redis_url, progress=False)

    assert report.trimmed > 0
    assert after.ok, after.lines()
    assert after.accounts == 4
    r = connect_async(redis_url)
    carried = {}
    for p in range(config.partitions):
        carried.update(await r.hgetall(keys.carried(p)))
    await r.aclose()
    assert {k.decode().split("|")[0] for k in carried} == {"acct-0", "acct-1"}


async def test_reports_over_a_period_before_the_retained_records_say_so(tollgate, gateway,
                                                                       redis_url, config,
                                                                       tmp_path):
    subs = await gateway.setup(accounts=2)
    await traffic(gateway, subs)
    await ack_everything(redis_url, config.partitions)
    await tollgate.billing.trim(now_ms=past_retention(config))
    later = int(time.time() * 1000) + 1000  # after every trimmed record

    lines = {
        "export": export(redis_url, str(tmp_path / "all.csv"), from_ms=0,
                         progress=False).lines(),
        "rerate": rerate(redis_url, account="acct-0", dry_run=True, progress=False).lines(),
        "reconcile": reconcile(redis_url, progress=False).lines(),
        "export from later": export(redis_url, str(tmp_path / "later.csv"), from_ms=later,
                                    progress=False).lines(),
        "rerate from later": rerate(redis_url, account="acct-0", from_ms=later, dry_run=True,
                                    progress=False).lines()}

    said = {what: any("no longer retained" in line for line in out)
            for what, out in lines.items()}
    assert said == {"export": True, "rerate": True, "reconcile": True,
                    "export from later": False, "rerate from later": False}
