"""The charging kernel: price, commit, release and grant a batch of items in batch order."""

from __future__ import annotations

import numpy as np
from numba import njit

INT64_MAX = np.iinfo(np.int64).max
MONEY_LIMIT = 2**62
"""No single charge may exceed this, nor take a balance below -MONEY_LIMIT (no int64 wrap)."""

# Item outcome codes (Diameter values, as engine.domain.ResultCode).
SUCCESS = 2001
CREDIT_LIMIT_REACHED = 4012
INVALID_AVP_VALUE = 5004
RATING_FAILED = 5031

MONEY = -1


@njit(cache=True, nogil=True)
def billable_increments(units: int, increment: int, first_increment: int) -> int:
    """Increments charged for `units`: at least the first increment, rounded up."""
    if units <= 0:
        return 0
    if units < first_increment:
        units = first_increment
    return (units + increment - 1) // increment


@njit(cache=True, nogil=True)
def price_units(units: int, rate: int, rate_price: np.ndarray, rate_increment: np.ndarray,
                rate_first: np.ndarray) -> int:
    """Money for `units` under `rate`, or -1 when it would overflow int64."""
    n = billable_increments(units, rate_increment[rate], rate_first[rate])
    p = rate_price[rate]
    if p != 0 and n > INT64_MAX // p:
        return -1
    return n * p


@njit(cache=True, nogil=True)
def bucket_applies(b: int, rg: int, unit_type: int, time_ms: int, bucket_rg_start: np.ndarray,
                   bucket_rgs: np.ndarray, bucket_unit: np.ndarray,
                   bucket_expiry: np.ndarray) -> bool:
    if bucket_unit[b] != unit_type:
        return False
    if bucket_expiry[b] != 0 and bucket_expiry[b] <= time_ms:
        return False
    for k in range(bucket_rg_start[b], bucket_rg_start[b + 1]):
        if bucket_rgs[k] == rg:
            return True
    return False


@njit(cache=True, nogil=True)
def charge_kernel(
    item_acct: np.ndarray,       # account index of each item
    item_rg: np.ndarray,         # rating group
    item_rate: np.ndarray,       # rate index, -1 = not priced
    item_time: np.ndarray,       # event time, Unix ms
    item_used: np.ndarray,       # units to commit (0 = none)
    item_want: np.ndarray,       # 0 = commit only, 1 = also grant, 2 = direct debit (event)
    item_requested: np.ndarray,  # units asked for, 0 = the rate's default quota
    item_res_src: np.ndarray,    # current reservation: bucket index or -1 (money)
    item_res_amount: np.ndarray,  # micros or bucket units held (0 = no reservation)
    rate_price: np.ndarray,
    rate_increment: np.ndarray,
    rate_first: np.ndarray,
    rate_quota: np.ndarray,
    rate_unit: np.ndarray,
    acct_money: np.ndarray,      # free money per account (reservations taken out)
    acct_floor: np.ndarray,      # lowest the free money may go by a grant: -credit limit
    acct_bucket_start: np.ndarray,  # account a: buckets start[a]..start[a+1], consumption order
    bucket_remaining: np.ndarray,
    bucket_unit: np.ndarray,
    bucket_expiry: np.ndarray,
    bucket_rg_start: np.ndarray,
    bucket_rgs: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Runs every item in batch order; items of one account see each other's effects.

    Per item: give back the current reservation, charge the used units (buckets in
    order, then money; usage is never refused, control happens at grant time),
    then grant from the first bucket with units left, else from money down to the
    floor. A direct debit (event) is all or nothing. Returns new arrays only.
    """
    n = item_acct.shape[0]
    result = np.full(n, SUCCESS, dtype=np.int64)
    granted = np.zeros(n, dtype=np.int64)
    res_src = np.full(n, MONEY, dtype=np.int64)
    res_amount = np.zeros(n, dtype=np.int64)
    charged = np.zeros(n, dtype=np.int64)
    money = acct_money.copy()
    money_reserved = np.zeros(acct_money.shape[0], dtype=np.int64)
    remaining = bucket_remaining.copy()
    bucket_reserved = np.zeros(bucket_remaining.shape[0], dtype=np.int64)

    cap = 0
    for i in range(n):
        a = item_acct[i]
        cap += acct_bucket_start[a + 1] - acct_bucket_start[a] + 1
    chg_item = np.empty(cap, dtype=np.int64)
    chg_src = np.empty(cap, dtype=np.int64)
    chg_units = np.empty(cap, dtype=np.int64)
    chg_money = np.empty(cap, dtype=np.int64)
    n_chg = 0

    for i in range(n):
        a = item_acct[i]
        r = item_rate[i]
        used = item_used[i]
        # Give back what the session holds for this rating group.
        if item_res_amount[i] != 0:
            s = item_res_src[i]
            if s == MONEY:
                money[a] += item_res_amount[i]
                money_reserved[a] -= item_res_amount[i]
            else:
                remaining[s] += item_res_amount[i]
                bucket_reserved[s] -= item_res_amount[i]
        if r < 0:
            result[i] = RATING_FAILED
            continue

        unit = rate_unit[r]
        want = item_want[i]
        target = rate_quota[r]
        if want == 2:
            target = used
        elif item_requested[i] > 0 and item_requested[i] < target:
            target = item_requested[i]
        cost_used = price_units(used, r, rate_price, rate_increment, rate_first)
        cost_target = 0
        if want != 0:
            cost_target = price_units(target, r, rate_price, rate_increment, rate_first)
        if (cost_used < 0 or cost_target < 0 or cost_used > MONEY_LIMIT
                or cost_target > MONEY_LIMIT or money[a] - cost_used < -MONEY_LIMIT):
            result[i] = INVALID_AVP_VALUE  # amounts beyond int64 arithmetic
            continue

        if want == 2:
            # Direct debit: refuse unless buckets and money above the floor cover it all.
            covered = 0
            for b in range(acct_bucket_start[a], acct_bucket_start[a + 1]):
                if covered < used and bucket_applies(b, item_rg[i], unit, item_time[i],
                                                     bucket_rg_start, bucket_rgs,
                                                     bucket_unit, bucket_expiry):
                    covered += min(remaining[b], used - covered)
            if covered < used:
                cost = price_units(used - covered, r, rate_price, rate_increment, rate_first)
                if cost > 0 and cost > money[a] - acct_floor[a]:
                    result[i] = CREDIT_LIMIT_REACHED
                    continue
            granted[i] = used

        # Charge the used units: buckets in consumption order, then money.
        left = used
        for b in range(acct_bucket_start[a], acct_bucket_start[a + 1]):
            if left == 0:
                break
            if remaining[b] > 0 and bucket_applies(b, item_rg[i], unit, item_time[i],
                                                   bucket_rg_start, bucket_rgs,
                                                   bucket_unit, bucket_expiry):
                take = min(left, remaining[b])
                remaining[b] -= take
                left -= take
                chg_item[n_chg] = i
                chg_src[n_chg] = b
                chg_units[n_chg] = take
                chg_money[n_chg] = 0
                n_chg += 1
        if left > 0:
            cost = price_units(left, r, rate_price, rate_increment, rate_first)
            money[a] -= cost
            charged[i] = cost
            chg_item[n_chg] = i
            chg_src[n_chg] = MONEY
            chg_units[n_chg] = left
            chg_money[n_chg] = cost
            n_chg += 1

        if want != 1:
            continue
        # Grant: the first bucket with units left, else money down to the floor.
        for b in range(acct_bucket_start[a], acct_bucket_start[a + 1]):
            if remaining[b] > 0 and bucket_applies(b, item_rg[i], unit, item_time[i],
                                                   bucket_rg_start, bucket_rgs,
                                                   bucket_unit, bucket_expiry):
                g = min(target, remaining[b])
                remaining[b] -= g
                bucket_reserved[b] += g
                granted[i] = g
                res_src[i] = b
                res_amount[i] = g
                break
        else:
            available = money[a] - acct_floor[a]
            g = target
            cost = price_units(g, r, rate_price, rate_increment, rate_first)
            if cost > available and rate_price[r] > 0:
                g = (available // rate_price[r]) * rate_increment[r] if available > 0 else 0
                cost = price_units(g, r, rate_price, rate_increment, rate_first)
                if g <= 0 or cost > available:
                    result[i] = CREDIT_LIMIT_REACHED
                    continue
            money[a] -= cost
            money_reserved[a] += cost
            granted[i] = g
            res_amount[i] = cost

    return (result, granted, res_src, res_amount, charged, money, money_reserved, remaining,
            bucket_reserved, chg_item[:n_chg], chg_src[:n_chg], chg_units[:n_chg],
            chg_money[:n_chg])
