"""`tollgate reconcile` checks reservations: none is negative, and what an account holds is
what its live sessions hold (issue 24: a session taken over left one of each, unreported)."""

from __future__ import annotations

import pytest

from tests.helpers import DATA_RG, VOICE_RG, mscc, request
from tollgate.engine.billing.reconcile import reconcile
from tollgate.engine.storage import keys
from tollgate.engine.storage.session_blob import pack_session, unpack_session
from tollgate.v1 import charging_pb2 as cpb

ACCOUNT, SUB = "acct-0", "sub-0-0"


async def open_session(gateway) -> None:
    await gateway.setup()
    answer = await gateway.charge(request("s1", 0, cpb.INITIAL, SUB, mscc(DATA_RG, want=0),
                                          mscc(VOICE_RG, want=0, field="time_seconds")))
    assert answer.result == cpb.SUCCESS


def account_key(config) -> str:
    return keys.account(keys.partition_of(ACCOUNT, config.partitions), ACCOUNT)


async def test_live_sessions_holding_what_the_account_reserves_reconcile(tollgate, gateway):
    await open_session(gateway)

    report = reconcile(tollgate.config.redis_url, progress=False)

    assert report.ok, report.lines()


# Each plant keeps the money and unit sums whole, so only the reservation check can see it.
PLANTS = {
    "money": [("mres", -5000), ("money", 5000)],
    "bucket": [("b:data-100mb:res", -1000), ("b:data-100mb:rem", 1000)],
    "member": [(f"m:{SUB}:r1", -1)],
}


@pytest.mark.parametrize("plant", PLANTS)
async def test_a_negative_reservation_is_reported(tollgate, gateway, db, plant):
    await gateway.setup()
    for field, delta in PLANTS[plant]:
        await db.hincrby(account_key(tollgate.config), field, delta)

    report = reconcile(tollgate.config.redis_url, progress=False)

    field, value = PLANTS[plant][0]
    assert not report.ok
    assert f"{ACCOUNT}: negative reservation {field} = {value}" in report.problems


async def test_a_reservation_no_live_session_holds_is_reported(tollgate, gateway, db):
    await open_session(gateway)
    acct = await gateway.account(ACCOUNT)
    # The session leaves the account's open set, as a take-over's TERMINATION did: nothing
    # will ever release what it holds.
    p = keys.partition_of(ACCOUNT, tollgate.config.partitions)
    await db.srem(keys.account_sessions(p, ACCOUNT), "s1")

    report = reconcile(tollgate.config.redis_url, progress=False)

    assert not report.ok
    assert (f"{ACCOUNT}: mres holds {acct.reserved_micros} but its live sessions hold 0"
            in report.problems)
    assert (f"{ACCOUNT}: b:data-100mb:res holds {acct.buckets[0].reserved} but its live "
            "sessions hold 0") in report.problems


async def test_a_session_of_another_account_in_the_open_set_is_reported(tollgate, gateway,
                                                                       db):
    await open_session(gateway)
    p = keys.partition_of(ACCOUNT, tollgate.config.partitions)
    s = unpack_session("s1", await db.get(keys.session(p, "s1")))
    assert s is not None
    s.account_id = "someone-else"
    await db.set(keys.session(p, "s1"), pack_session(s))

    report = reconcile(tollgate.config.redis_url, progress=False)

    assert (f"{ACCOUNT}: session 's1' of its open set belongs to account 'someone-else'"
            in report.problems)
