"""Batches overlap (one prepared while the one before is applied) without double counting."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

import tollgate.engine.charging.engine as engine_module
from tests.helpers import DATA_RG, EUR, MB, SMS_RG, Gateway, mscc, request, usage_records
from tollgate.engine.domain import ResultCode
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.redis_client import connect_async
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb


def _waited() -> float:
    return REGISTRY.get_sample_value("tollgate_requests_waited_total") or 0.0


async def _charged_once(gw: Gateway, config: Config, sessions: list[str], units: int
                        ) -> None:
    """Each session's charge is in acct-0's books once, and its money left the balance."""
    db = connect_async(config.redis_url)
    records = await usage_records(db, config)
    await db.aclose()
    assert sorted(r.session_id for r in records) == sorted(sessions)
    assert sum(r.units for r in records) == units
    account = await gw.account("acct-0")
    assert account.money_micros == 10 * EUR - sum(r.money_micros for r in records)


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
        await _charged_once(gw, config, [f"ev-{n}" for n in range(30)], 30 * MB)
    finally:
        await channel.close()
        await app.stop()


async def test_the_small_calls_lane_and_the_bulk_lane_never_write_one_account_at_once(
        config: Config) -> None:
    # Unary calls go in the small calls' lane, ChargeBatch calls of 40 in the bulk lane: the
    # two prepare and apply side by side, and an account that a batch of one lane holds is
    # the other's only once that batch has landed.
    app = await Tollgate(config).start()
    channel = grpc.aio.insecure_channel(app.address)
    try:
        gw = Gateway(channel)
        [sub] = await gw.setup(money=10 * EUR)
        waited = _waited()

        def event(session: str) -> cpb.ChargeRequest:  # 240 of them fit in the bundle
            return request(session, 0, cpb.EVENT, sub, mscc(DATA_RG, used=MB // 10))
        unary = [gw.charge(event(f"u-{n}")) for n in range(40)]
        bulk = [gw.batch([event(f"b-{k}-{n}") for n in range(40)]) for k in range(5)]
        done = await asyncio.gather(*unary, *bulk)

        answers = done[:40] + [a for call in done[40:] for a in call]
        assert [a.result for a in answers] == [ResultCode.SUCCESS] * 240
        # No write refused by the version check: neither lane wrote on a version the other
        # had moved (they met on the account, and one waited).
        assert app.engine is not None and app.engine.conflicts == 0
        assert _waited() > waited
        await _charged_once(gw, config, [f"u-{n}" for n in range(40)] + [
            f"b-{k}-{n}" for k in range(5) for n in range(40)], 24 * MB)
    finally:
        await channel.close()
        await app.stop()


async def test_a_large_batch_of_unary_calls_does_not_wait_for_itself(
        tollgate: Tollgate, gateway: Gateway) -> None:
    # Bulk steps wait while unary calls are in the engine (SmallFirst); a batch of the small
    # calls' lane, large enough to take turns between its steps, must not wait for its own.
    [sub] = await gateway.setup()
    engine = tollgate.engine
    assert engine is not None
    engine.small_first.max_wait_s = 30.0
    n = 3 * engine_module.YIELD_AT
    started = asyncio.get_running_loop().time()
    calls = [engine.submit_one(request(f"u-{k}", 0, cpb.EVENT, sub, mscc(
        SMS_RG, used=1, field="service_units")).SerializeToString()) for k in range(n)]
    answers = await asyncio.wait_for(asyncio.gather(*(c.future for c in calls)), 10)
    assert [cpb.ChargeAnswer.FromString(a[0]).result for a in answers] == [cpb.SUCCESS] * n
    assert asyncio.get_running_loop().time() - started < 5


async def test_a_few_requests_from_a_front_go_first_as_unary_calls_do(
        tollgate: Tollgate, gateway: Gateway) -> None:
    # The Diameter front's CCRs of one read reach the engine through Engine.charge: while
    # they are in it, bulk work waits for them (SmallFirst), as for a unary Charge.
    [sub] = await gateway.setup()
    engine = tollgate.engine
    assert engine is not None

    def events(n: int) -> list[cpb.ChargeRequest]:
        return [request(f"f-{n}-{k}", 0, cpb.EVENT, sub, mscc(
            SMS_RG, used=1, field="service_units")) for k in range(n)]
    seen: list[int] = []
    for n in (2, 40):  # a few go first; a bulk call is bulk work itself
        task = asyncio.create_task(engine.charge(events(n)))
        await asyncio.sleep(0)
        seen.append(engine.small_first.active)
        answers = await task
        assert [a.result for a in answers] == [cpb.SUCCESS] * n
    assert seen == [1, 0] and engine.small_first.active == 0


async def test_a_large_batch_lets_other_work_run_between_its_steps(
        tollgate: Tollgate, gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    # Work scheduled while a batch is assembled runs before that batch's outcome is built
    # when the batch is large (its steps take milliseconds), after it when it is small.
    [sub] = await gateway.setup()
    order: list[str] = []
    assemble, build_outcome = engine_module.assemble, engine_module.build_outcome

    def assembling(*args: Any, **kwargs: Any) -> Any:
        asyncio.get_running_loop().call_soon(order.append, "other work")
        return assemble(*args, **kwargs)

    def building(*args: Any, **kwargs: Any) -> Any:
        order.append("outcome")
        return build_outcome(*args, **kwargs)
    monkeypatch.setattr(engine_module, "assemble", assembling)
    monkeypatch.setattr(engine_module, "build_outcome", building)
    sms = mscc(SMS_RG, used=1, field="service_units")
    large = engine_module.YIELD_AT

    answers = await gateway.batch([request(f"l{n}", 0, cpb.EVENT, sub, sms)
                                   for n in range(large)])
    assert order == ["other work", "outcome"]
    order.clear()
    [small] = await gateway.batch([request("s", 0, cpb.EVENT, sub, sms)])

    assert order == ["outcome", "other work"]
    assert {a.result for a in answers} | {small.result} == {cpb.SUCCESS}
