"""A gateway's data session from the first byte to the bill.

The sample plan: data costs 1000 micros per 1000-octet increment, a grant is at most the
10 MB default quota, and the account starts with a 100 MB bundle. The subscriber uses the
bundle up, goes on with money, gets less than asked when the money runs low, is refused,
tops up, resumes and hangs up. Every expected number below is worked out by hand.
"""

from __future__ import annotations

from tests.helpers import DATA_RG, EUR, MB, mscc, request
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb

SESSION = "pgw-1;1700000000;42"


async def test_a_data_session_uses_the_bundle_then_money_and_resumes_after_a_top_up(gateway):
    [sub] = await gateway.setup(money=15 * EUR)
    rn = 0
    reported = 0
    charged = 0

    async def send(kind: int, used: int | None, want: int | None = 0) -> cpb.ChargeAnswer:
        nonlocal rn, reported, charged
        a = await gateway.charge(request(SESSION, rn, kind, sub,
                                         mscc(DATA_RG, used=used, want=want)))
        assert a.result == cpb.SUCCESS, a
        assert (a.session_id, a.request_number) == (SESSION, rn)
        rn += 1
        reported += used or 0
        charged += a.charged_micros
        return a

    async def account() -> ppb.Account:
        return await gateway.account("acct-0")

    # The session opens with the default quota, taken from the bundle.
    a = await send(cpb.INITIAL, None)
    assert a.grants[0].granted.total_octets == 10 * MB
    assert a.grants[0].volume_threshold_octets == 2 * MB

    # Nine full quotas used: the tenth and last 10 MB of the bundle is now granted.
    for n in range(1, 10):
        a = await send(cpb.UPDATE, 10 * MB)
        assert a.grants[0].granted.total_octets == 10 * MB
        assert a.charged_micros == 0
        b = (await account()).buckets[0]
        assert (b.used, b.reserved, b.remaining) == (n * 10 * MB, 10 * MB, (9 - n) * 10 * MB)

    # The bundle is used up: the next 10 MB are held from money (10.00).
    a = await send(cpb.UPDATE, 10 * MB)
    assert a.grants[0].result == cpb.SUCCESS
    assert a.grants[0].granted.total_octets == 10 * MB
    assert a.charged_micros == 0
    acct = await account()
    assert (acct.buckets[0].used, acct.buckets[0].remaining, acct.buckets[0].reserved) == (
        100 * MB, 0, 0)
    assert (acct.money_micros, acct.reserved_micros) == (5 * EUR, 10 * EUR)

    # 10 MB on money cost 10.00; the 5.00 left buy only 5 MB of the 10 MB asked for.
    a = await send(cpb.UPDATE, 10 * MB)
    assert a.charged_micros == 10 * EUR
    assert a.grants[0].result == cpb.SUCCESS
    assert a.grants[0].granted.total_octets == 5 * MB
    acct = await account()
    assert (acct.money_micros, acct.reserved_micros) == (0, 5 * EUR)

    # Those 5 MB used: nothing is left to grant.
    a = await send(cpb.UPDATE, 5 * MB)
    assert a.charged_micros == 5 * EUR
    assert a.grants[0].result == cpb.CREDIT_LIMIT_REACHED
    assert not a.grants[0].HasField("granted")
    acct = await account()
    assert (acct.money_micros, acct.reserved_micros) == (0, 0)
    assert list(acct.reservations) == []

    # A top-up of 2.00 and the session resumes with the 2 MB it buys.
    topup = await gateway.provisioning.TopUp(ppb.TopUpRequest(
        topup_id="voucher-1", account_id="acct-0", amount_micros=2 * EUR))
    assert (topup.applied, topup.money_micros) == (True, 2 * EUR)
    a = await send(cpb.UPDATE, None)
    assert a.grants[0].result == cpb.SUCCESS
    assert a.grants[0].granted.total_octets == 2 * MB
    acct = await account()
    assert (acct.money_micros, acct.reserved_micros) == (0, 2 * EUR)

    # The last report, 1 234 567 octets, is 1235 increments; the rest of the hold goes back.
    a = await send(cpb.TERMINATION, 1_234_567, want=None)
    assert a.charged_micros == 1_235_000
    assert not a.grants[0].HasField("granted")

    acct = await account()
    spent = 15 * EUR + 2 * EUR - acct.money_micros
    [b] = acct.buckets
    assert reported == 100 * MB + 10 * MB + 5 * MB + 1_234_567
    assert b.used == 100 * MB
    assert spent == charged == 10 * EUR + 5 * EUR + 1_235_000
    # Money paid for exactly the octets beyond the bundle, rounded up to whole kilobytes.
    assert spent == -(-(reported - b.used) // 1000) * 1000
    assert (acct.money_micros, acct.reserved_micros) == (765_000, 0)
    assert (b.reserved, b.remaining) == (0, 0)
    assert list(acct.reservations) == []
