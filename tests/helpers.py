"""Test helpers: a gateway client speaking the real gRPC API, and request builders."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import redis.asyncio as aioredis

from tollgate.engine.charging.decode import MAX_TIME_MS
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys, record_block
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc, provisioning_pb2_grpc, usage_pb2
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

EUR = 1_000_000
MB = 1_000_000

DATA_RG, VOICE_RG, SMS_RG, VIDEO_RG = 10, 100, 200, 20


def sample_plan(plan_id: str = "basic") -> ppb.Plan:
    """Data at 1.00/MB in 1 kB increments, voice per minute with 60 s minimum, SMS per unit,
    and a 100 MB data bundle."""
    return ppb.Plan(
        plan_id=plan_id, name="Basic", currency="EUR",
        rates=[
            ppb.Rate(rating_group=DATA_RG, unit_type=com.OCTETS, price_micros=1000,
                     increment=1000, default_quota=10 * MB, validity_time_s=3600,
                     quota_holding_time_s=300, threshold_percent=20),
            ppb.Rate(rating_group=VOICE_RG, unit_type=com.SECONDS, price_micros=100_000,
                     increment=60, first_increment=60, default_quota=300),
            ppb.Rate(rating_group=SMS_RG, unit_type=com.SERVICE_UNITS, price_micros=50_000,
                     increment=1, default_quota=1),
            ppb.Rate(rating_group=DATA_RG, zone="roam-eu", unit_type=com.OCTETS,
                     price_micros=5000, increment=1000, default_quota=1 * MB),
        ],
        bundles=[ppb.BundleTemplate(bucket_id="data-100mb", rating_groups=[DATA_RG],
                                    unit_type=com.OCTETS, units=100 * MB)])


def any_event_time(config: Config) -> Config:
    """`config` accepting every event time a request may carry, for tests that date their
    requests at a fixed moment (a tariff window of a past day) or at the limits."""
    return config.replace(event_time_past_s=MAX_TIME_MS // 1000,
                          event_time_future_s=MAX_TIME_MS // 1000)


def request(session: str, rn: int, kind: int, subscriber: str, *units: cpb.ServiceUnits,
            zone: str = "", time_ms: int = 0, destination: str = "") -> cpb.ChargeRequest:
    return cpb.ChargeRequest(session_id=session, request_number=rn, type=kind,
                             subscriber_id=subscriber, units=list(units), zone=zone,
                             event_time_ms=time_ms, origin="pgw-test", destination=destination)


def mscc(rg: int, *, used: int | None = None, want: int | None = None,
         field: str = "total_octets") -> cpb.ServiceUnits:
    su = cpb.ServiceUnits(rating_group=rg)
    if used is not None:
        su.used.CopyFrom(cpb.Units(**{field: used}))
    if want is not None:
        su.requested.CopyFrom(cpb.Units(**({field: want} if want else {})))
    return su


class Gateway:
    """A network gateway's view of Tollgate: real stubs over a real channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.charging = charging_pb2_grpc.ChargingStub(channel)
        self.provisioning = provisioning_pb2_grpc.ProvisioningStub(channel)

    async def charge(self, req: cpb.ChargeRequest) -> cpb.ChargeAnswer:
        return await self.charging.Charge(req)

    async def batch(self, reqs: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        ans = await self.charging.ChargeBatch(cpb.ChargeBatchRequest(requests=reqs))
        return list(ans.answers)

    async def setup(self, *, plan: ppb.Plan | None = None, accounts: int = 1,
                    money: int = 10 * EUR, credit_limit: int = 0,
                    subscribers_per_account: int = 1, prefix: str = "") -> list[str]:
        """Plan, accounts acct-N and subscribers sub-N-M; returns the subscriber ids."""
        plan = plan or sample_plan()
        await self.provisioning.PutPlan(plan)
        subs = []
        for a in range(accounts):
            account_id = f"{prefix}acct-{a}"
            await self.provisioning.CreateAccount(ppb.CreateAccountRequest(
                account_id=account_id, plan_id=plan.plan_id, initial_money_micros=money,
                credit_limit_micros=credit_limit))
            for m in range(subscribers_per_account):
                sub = f"{prefix}sub-{a}-{m}"
                await self.provisioning.CreateSubscriber(
                    ppb.Subscriber(subscriber_id=sub, account_id=account_id))
                subs.append(sub)
        return subs

    async def account(self, account_id: str) -> ppb.Account:
        return await self.provisioning.GetAccount(ppb.GetAccountRequest(account_id=account_id))


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Gateway]:
    """A Tollgate of the test's own (not the fixture's) and a gateway connected to it."""
    app = await Tollgate(config).start()
    channel = grpc.aio.insecure_channel(app.address)
    try:
        yield Gateway(channel)
    finally:
        await channel.close()
        await app.stop()


async def usage_records(db: aioredis.Redis, config: Config, account_id: str = "acct-0"
                        ) -> list[usage_pb2.RatedUsage]:
    """The account's USAGE records, oldest first."""
    stream = keys.usage_stream(keys.partition_of(account_id, config.partitions))
    found = [usage_pb2.RatedUsage.FromString(r) for sid, f in await db.xrange(stream)
             for _, r in record_block.records(sid, f)]
    return [r for r in found if r.account_id == account_id and r.kind == usage_pb2.USAGE]


def past_retention(config: Config) -> int:
    """A trimmer's clock (Unix ms) for which every record written now is older than the
    usage retention."""
    return int(time.time() * 1000) + (config.usage_retention_days + 1) * 86_400_000


def data_rate(**kw: object) -> ppb.Rate:
    """Data at 1.00 per MB (1000 micros per 1000-octet increment), 10 MB default quota."""
    fields: dict[str, object] = {"rating_group": DATA_RG, "unit_type": com.OCTETS,
                                 "price_micros": 1000, "increment": 1000,
                                 "default_quota": 10 * MB}
    fields.update(kw)
    return ppb.Rate(**fields)  # type: ignore[arg-type]
