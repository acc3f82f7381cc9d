"""The engine's account cache keeps balances in tables: what the cache holds after charging is
what Redis holds, and an account let go while its batch is in flight takes nothing of that
batch into the tables (its columns may already be another account's)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import tollgate.engine.charging.engine as engine_module
from tests.helpers import DATA_RG, MB, SMS_RG, Gateway, mscc, request
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb

SMS = mscc(SMS_RG, used=1, field="service_units")


async def cached_is_stored(tollgate: Tollgate, account_id: str) -> None:
    cached = tollgate.engine.accounts.up_to_date(account_id)
    stored, _ = await tollgate.store.get_account(account_id)
    assert dataclasses.replace(cached, sessions={}) == dataclasses.replace(stored, sessions={})


async def test_after_data_and_events_on_many_accounts_the_cache_is_what_redis_holds(
        tollgate: Tollgate, gateway: Gateway) -> None:
    subs = await gateway.setup(accounts=5)
    batch = [request(f"d{n}", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=5 * MB))
             for n, sub in enumerate(subs)]
    batch += [request(f"e{n}", 0, cpb.EVENT, sub, SMS) for n, sub in enumerate(subs)]

    answers = await gateway.batch(batch)
    ended = await gateway.batch([request(f"d{n}", 1, cpb.TERMINATION, sub,
                                         mscc(DATA_RG, used=3 * MB))
                                 for n, sub in enumerate(subs)])

    assert {a.result for a in answers + ended} == {cpb.SUCCESS}
    for a in range(5):
        await cached_is_stored(tollgate, f"acct-{a}")


async def test_an_account_let_go_while_its_batch_is_in_flight_keeps_nothing_of_it(
        tollgate: Tollgate, gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    sub0, sub1 = await gateway.setup(accounts=2)
    await gateway.charge(request("warm-1", 0, cpb.EVENT, sub1, SMS))
    await gateway.charge(request("warm-0", 0, cpb.EVENT, sub0, SMS))  # acct-0 cached
    cache = tollgate.engine.accounts
    other, _ = await tollgate.store.get_account("acct-1")
    columns = {}
    build_outcome = engine_module.build_outcome

    def letting_go(*args: Any, **kwargs: Any) -> Any:
        # Between the kernel and the apply: acct-0 is let go, and acct-1 (read again) takes
        # the columns it gave back.
        columns["acct-0"] = cache["acct-0"].row
        cache.drop("acct-1")
        cache.drop("acct-0")  # given back last: taken first
        cache.put([other])
        columns["acct-1"] = other.row
        return build_outcome(*args, **kwargs)
    monkeypatch.setattr(engine_module, "build_outcome", letting_go)

    [answer] = await gateway.batch([request("sms", 0, cpb.EVENT, sub0, SMS)])
    monkeypatch.undo()

    assert answer.result == cpb.SUCCESS and answer.charged_micros > 0
    assert columns["acct-1"] == columns["acct-0"]  # the columns changed hands
    assert "acct-0" not in cache
    await cached_is_stored(tollgate, "acct-1")  # nothing of acct-0's charge landed on it
    again = await gateway.charge(request("sms-2", 0, cpb.EVENT, sub0, SMS))
    assert again.result == cpb.SUCCESS
    await cached_is_stored(tollgate, "acct-0")  # read again from Redis, then charged
    account = await gateway.account("acct-0")
    assert account.money_micros == 10_000_000 - 3 * answer.charged_micros
