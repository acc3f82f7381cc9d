"""The Numba charging kernel equals its plain-Python reference on random batches."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.kernel_inputs import kernel_args
from tollgate.engine.charging.kernels.charge import charge_kernel
from tollgate.engine.charging.kernels.reference import (
    RefAccount,
    RefBucket,
    RefItem,
    RefMember,
    RefRate,
    RefState,
    RefWindow,
    charge_reference,
)

MONEY = -1
HOUR = 3_600_000
# A Monday 17:30 UTC (1970-01-05 is a Monday): windows at 18:00 and 19:00 are near.
MONDAY_1730 = 4 * 86_400_000 + 17 * HOUR + 30 * 60_000
# Dated windows fall on that Monday (day 4), the Tuesday after (5) or the Thursday (7), or
# are weekly (-1); items are timed on those days and over the midnight before Tuesday.
DATES = [-1, -1, -1, 4, 5, 7]


@st.composite
def rates(draw):
    increment = draw(st.sampled_from([1, 10, 1024, 60]))
    tiers = sorted(set(draw(st.lists(st.integers(1, 40), max_size=3))))
    step_at = sorted(set(draw(st.lists(st.integers(1, 5), max_size=2))))
    return RefRate(
        per=draw(st.sampled_from([0, 0, 1, 60, 1_000_000])),
        rounding=draw(st.integers(0, 2)), fee=draw(st.sampled_from([0, 0, 1, 250_000])),
        # Each step starts on the grid before it: the rate's increment, then 30 and 7.
        steps=[(increment * 3 + 30 * k, inc) for k, inc in zip(step_at, (30, 7), strict=False)]
        if step_at else [],
        session_max=draw(st.sampled_from([0, 0, 0, 2_000_000, 10**8])),
        session_free=draw(st.booleans()),
        price=draw(st.sampled_from([0, 1, 7, 1000, 250_000, 2**40])), increment=increment,
        first=draw(st.sampled_from([0, 1, 30, 5000])), quota=draw(st.integers(1, 50_000)),
        unit=draw(st.integers(1, 3)), validity=draw(st.sampled_from([60, 600, 7200])),
        zero_rated=draw(st.booleans()) and draw(st.booleans()),
        not_allowed=draw(st.integers(0, 9)) == 0,
        tiers=[(k * increment * 100, draw(st.sampled_from([0, 3, 500, 90_000]))) for k in tiers],
        windows=[RefWindow(draw(st.integers(1, 127)), s, e,
                           draw(st.sampled_from([0, 2, 700, 120_000])), date)
                 for (s, e), date in draw(st.lists(st.tuples(st.sampled_from(
                     [(1080, 1140), (1140, 1440), (0, 420), (1050, 1110), (0, 1440)]),
                     st.sampled_from(DATES)), max_size=3, unique=True))])


@st.composite
def batches(draw):
    rate_list = draw(st.lists(rates(), min_size=1, max_size=4))
    n_accounts = draw(st.integers(1, 4))
    accounts = [RefAccount(
        money=draw(st.integers(-10**7, 10**9)), floor=draw(st.sampled_from([0, -10**6, -10**8])),
        reserved=draw(st.sampled_from([0, 0, 10**6])),
        cap=draw(st.sampled_from([0, 0, 5 * 10**6, 10**8])),
        spent=draw(st.sampled_from([0, 10**6])), low_mark=draw(st.sampled_from([0, 2 * 10**6])),
        cap_level=draw(st.sampled_from([0, 0, 80])), low_flag=draw(st.integers(0, 1)),
        exhausted_flag=draw(st.integers(0, 1))) for _ in range(n_accounts)]
    buckets = []
    for a in range(n_accounts):
        for _ in range(draw(st.integers(0, 3))):
            initial = draw(st.integers(0, 100_000))
            buckets.append(RefBucket(
                account=a, remaining=draw(st.integers(0, initial)),
                unit=draw(st.integers(1, 3)),
                expiry=draw(st.sampled_from([0, 500, 10**13, MONDAY_1730 + 1_800_000])),
                rating_groups=draw(st.lists(st.sampled_from([10, 20, 30]), min_size=1,
                                            max_size=3, unique=True)),
                initial=initial, level=draw(st.sampled_from([0, 0, 50, 80]))))
    members = [RefMember(
        cap_money=draw(st.sampled_from([0, 10**5, 10**7])), spent=draw(st.integers(0, 10**5)),
        reserved=draw(st.sampled_from([0, 1000])),
        cap_units=[draw(st.sampled_from([0, 0, 5000, 10**6])) for _ in range(3)],
        used_units=[draw(st.integers(0, 4000)) for _ in range(3)],
        reserved_units=[0, 0, 0]) for _ in range(draw(st.integers(0, 3)))]
    slots = draw(st.integers(1, 4))
    cycle_units = [draw(st.sampled_from([0, 500, 10**5])) for _ in range(slots)]
    items = []
    req = 0
    for _ in range(draw(st.integers(0, 30))):
        req += draw(st.sampled_from([0, 1, 1]))
        a = draw(st.integers(0, n_accounts - 1))
        mine = [k for k, b in enumerate(buckets) if b.account == a]
        time = MONDAY_1730 + draw(st.sampled_from([0, 29 * 60_000, 95 * 60_000,
                                                   6 * HOUR + 40 * 60_000, 3 * 86_400_000]))
        items.append(RefItem(
            account=a, rating_group=draw(st.sampled_from([10, 20, 30])),
            rate=draw(st.integers(-1, len(rate_list) - 1)), time=time,
            start=time - draw(st.sampled_from([0, 0, 61_000, 45 * 60_000, 3 * HOUR])),
            used=draw(st.one_of(st.integers(0, 200_000), st.just(2**50))),
            want=draw(st.integers(0, 2)), requested=draw(st.integers(0, 60_000)),
            res_src=draw(st.sampled_from([MONEY, *mine])),
            res_amount=draw(st.sampled_from([0, 0, 500, 20_000])),
            res_units=draw(st.sampled_from([0, 0, 300])),
            member=draw(st.integers(-1, len(members) - 1)),
            grace=draw(st.integers(0, 5)) == 0, cycle_slot=draw(st.integers(0, slots - 1)),
            now=time + draw(st.sampled_from([0, 3_600_000, -18_000_000])),
            res_member=draw(st.booleans()),
            s_used=(used_before := draw(st.sampled_from([0, 0, 1, 45, 3000, 10**6]))),
            # What a session that used that much may have been billed (at least that).
            s_billed=used_before + draw(st.sampled_from([0, 0, 15, 1024])) if used_before else 0,
            s_rem=draw(st.sampled_from([0, 0, -1, 7, -59])) if used_before else 0,
            s_charged=draw(st.sampled_from([0, 3, 1_000_000])) if used_before else 0,
            s_cost=draw(st.sampled_from([0, 0, 500_000, 1_999_999])), req=req))
    return items, rate_list, RefState(accounts, buckets, members, cycle_units)


def run_kernel(items, rates, state):
    return charge_kernel(*kernel_args(items, rates, state))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_kernel_matches_reference(batch):
    items, rate_list, state = batch
    out, acct_out, bucket_out, member_out, units_out, cu, charges, events = run_kernel(*batch)
    ref, ref_state = charge_reference(items, rate_list, state)

    (result, granted, res_src, res_amount, charged, validity, final, s_used, s_billed, s_rem,
     s_charged) = (x.tolist() for x in out)
    assert s_used == [o.s_used for o in ref]
    assert s_billed == [o.s_billed for o in ref]
    assert s_rem == [o.s_rem for o in ref]
    assert s_charged == [o.s_charged for o in ref]
    assert result == [o.result for o in ref]
    assert granted == [o.granted for o in ref]
    assert res_src == [o.res_src for o in ref]
    assert res_amount == [o.res_amount for o in ref]
    assert charged == [o.charged for o in ref]
    for k, o in enumerate(ref):
        if o.result == 2001 and items[k].want == 1 and o.granted:
            assert validity[k] == o.validity, k
    assert final == [int(o.final) for o in ref]
    money, mres, spent, cap_level, low_flag, exh_flag = (x.tolist() for x in acct_out)
    assert money == [a.money for a in ref_state.accounts]
    assert mres == [a.reserved for a in ref_state.accounts]
    assert spent == [a.spent for a in ref_state.accounts]
    assert cap_level == [a.cap_level for a in ref_state.accounts]
    assert low_flag == [a.low_flag for a in ref_state.accounts]
    assert exh_flag == [a.exhausted_flag for a in ref_state.accounts]
    remaining, b_reserved, level = (x.tolist() for x in bucket_out)
    assert remaining == [b.remaining for b in ref_state.buckets]
    assert b_reserved == [b.reserved for b in ref_state.buckets]
    assert level == [b.level for b in ref_state.buckets]
    mspent, mmres = member_out.tolist()
    mused, mres_u = units_out.tolist()
    assert mspent == [m.spent for m in ref_state.members]
    assert mmres == [m.reserved for m in ref_state.members]
    assert mused == [u for m in ref_state.members for u in m.used_units]
    assert mres_u == [u for m in ref_state.members for u in m.reserved_units]
    assert cu.tolist() == ref_state.cycle_units
    got = [tuple(int(x) for x in row) for row in zip(*charges, strict=True)]
    assert got == [(i, *c) for i, o in enumerate(ref) for c in o.charges]
    assert [tuple(int(x) for x in row) for row in zip(*events, strict=True)] == ref_state.events


def test_a_release_that_would_pass_int64_is_refused_and_the_reservation_kept():
    """Money topped up to the top of int64 while a session held 20 000: giving that back
    would wrap. Kernel and reference refuse the item and keep the reservation held."""
    top = 2**63 - 1 - 100
    rate = RefRate(price=1, increment=1, first=0, quota=1000, unit=1, validity=60)
    state = RefState([RefAccount(money=top, floor=0, reserved=20_000)],
                     [RefBucket(account=0, remaining=top, unit=1, expiry=0, rating_groups=[10],
                                initial=top, reserved=300)], [], [0])
    items = [RefItem(account=0, rating_group=rg, rate=0, time=MONDAY_1730, used=0, want=1,
                     requested=0, res_src=src, res_amount=amount, res_units=amount,
                     now=MONDAY_1730) for rg, src, amount in ((10, MONEY, 20_000), (20, 0, 300))]

    out, acct_out, bucket_out, *_ = run_kernel(items, [rate], state)
    ref, ref_state = charge_reference(items, [rate], state)

    result, granted, res_src, res_amount = (x.tolist() for x in out[:4])
    assert result == [o.result for o in ref] == [5004, 5004]  # INVALID_AVP_VALUE
    assert granted == [o.granted for o in ref] == [20_000, 300]
    assert res_src == [o.res_src for o in ref] == [MONEY, 0]
    assert res_amount == [o.res_amount for o in ref] == [20_000, 300]
    assert acct_out[:2, 0].tolist() == [ref_state.accounts[0].money,
                                        ref_state.accounts[0].reserved] == [top, 20_000]
    assert bucket_out[0, 0] == ref_state.buckets[0].remaining == top
    assert bucket_out[1, 0] == 0 and ref_state.buckets[0].reserved == 300  # change / held
