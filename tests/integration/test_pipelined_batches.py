"""Batches overlap (one prepared while the one before is applied) without double counting."""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client import REGISTRY

from tests.helpers import DATA_RG, EUR, MB, Gateway, mscc, request, usage_records
from tollgate.engine.domain import ResultCode
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.redis_client import connect_async
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb


def _waited() -> float:
    return REGISTRY.get_sample_value("tollgate_requests_waited_total") or 0.0


async def test_a_request_waits_for_the_batch_in_flight_on_its_account(config: Config) -> None:
    # One request per batch: each is prepared while the one before it is being applied, so
    # nearly every request finds its account in flight.
    app = await Tollgate(config.replace(max_batch=1, batch_window_ms=0)).start()
    channel = grpc.aio.insecure_channel(app.address)
    try:
        gw = Gateway(channel)
        [sub] = await gw.setup(money=10 * EUR)
        waited = _waited()
        answers = await asyncio.gather(*(
            gw.charge(request(f"ev-{n}", 0, cpb.EVENT, sub, mscc(DATA_RG, used=MB)))
            for n in range(30)))
        assert [a.result for a in answers] == [ResultCode.SUCCESS] * 30
        assert _waited() > waited
        # Each batch saw the one before it: no write was refused by the version check, and
        # every charge is in the books once.
        assert app.engine is not None and app.engine.conflicts == 0
        db = connect_async(config.redis_url)
        records = await usage_records(db, config)
        await db.aclose()
        assert sorted(r.session_id for r in records) == sorted(f"ev-{n}" for n in range(30))
        assert sum(r.units for r in records) == 30 * MB
        account = await gw.account("acct-0")
        assert account.money_micros == 10 * EUR - sum(r.money_micros for r in records)
    finally:
        await channel.close()
        await app.stop()
