"""The charging kernel: price, commit, release and grant a batch of items in batch order."""

from __future__ import annotations

import numpy as np
from numba import njit

INT64_MAX = np.iinfo(np.int64).max
MONEY_LIMIT = 2**62
"""No single charge may exceed this, nor take a balance below -MONEY_LIMIT (no int64 wrap)."""
SMALL = 2**31
"""Two factors below this have a product below 2**62."""

# Item outcome codes (Diameter values, as engine.domain.ResultCode).
SUCCESS = 2001
END_USER_SERVICE_DENIED = 4010
CREDIT_LIMIT_REACHED = 4012
INVALID_AVP_VALUE = 5004
RATING_FAILED = 5031

MONEY = -1
NONE = -1
WANT_NONE, WANT_GRANT, WANT_DEBIT = 0, 1, 2
FLAG_GRACE = 1  # item flag: the subscriber is in GRACE (only zero-rated service)
FLAG_RES_MEMBER = 2  # item flag: its current reservation counts against the member's caps
RATE_ZERO_RATED, RATE_NOT_ALLOWED = 1, 2  # rate flags

# Event kinds (values of tollgate.v1.EventKind).
EV_BUCKET, EV_CAP, EV_LOW, EV_EXHAUSTED, EV_FINAL, EV_MEMBER_CAP = 1, 2, 3, 4, 5, 6

MINUTE_MS = 60_000
DAY_MS = 86_400_000
NO_BOUNDARY = INT64_MAX // 4
HORIZON_DAYS = 9
"""next_change looks this many local days ahead (from the day it starts in): over a week,
so a weekly window always shows its next change; a dated window further off bounds nothing."""

# Rows of the `rates` tuple's arrays (see engine.plans.RateTable.arrays): the rate table
# (a column per rate), tiers and windows (a column each, the rate's in [LO, HI)).
(R_PRICE, R_INCREMENT, R_FIRST, R_QUOTA, R_UNIT, R_VALIDITY, R_FLAGS, R_TIER_LO, R_TIER_HI,
 R_WIN_LO, R_WIN_HI) = range(11)
T_FROM, T_PRICE = 0, 1
W_DAYS, W_FROM, W_TO, W_PRICE, W_DATE = 0, 1, 2, 3, 4  # W_DATE: local day number, -1 weekly
# Rows of the kernel's other 2-D inputs (a few 2-D arrays cross into Numba faster than many
# 1-D ones). The accounts' first six are also its account outputs, in this order.
(I_ACCT, I_MEMBER, I_RG, I_RATE, I_START, I_TIME, I_USED, I_WANT, I_REQUESTED, I_FLAGS,
 I_RES_SRC, I_RES_UNITS, I_RES_AMOUNT, I_CYCLE_SLOT, I_OFFSET) = range(15)
(A_MONEY, A_MRES, A_SPENT, A_CAP_LEVEL, A_LOW_FLAG, A_EXH_FLAG, A_FLOOR, A_CAP, A_LOW_MARK,
 A_BUCKETS_LO, A_BUCKETS_HI) = range(11)
B_REMAINING, B_UNIT, B_EXPIRY, B_INITIAL, B_LEVEL, B_RG_LO, B_RG_HI = range(7)
M_CAP, M_SPENT, M_MRES = range(3)
U_CAP, U_USED, U_RES = range(3)

helper = njit(cache=True, nogil=True, forceinline=True, _nrt=False)  # type: ignore[call-overload]
"""For the kernels' helpers, which allocate nothing. Compiled without Numba's runtime (`_nrt`,
an option its type stubs lack), their array arguments are not reference-counted on every
call: those atomic increments and decrements were over half of the kernel's time. Inlined,
they cost no call either (another third of what was left)."""


@helper
def billable_increments(units: int, increment: int, first_increment: int) -> int:
    """Increments charged for `units`: at least the first increment, rounded up."""
    if units <= 0:
        return 0
    if units < first_increment:
        units = first_increment
    return (units + increment - 1) // increment


@helper
def window_at(r: int, local_ms: int, rt: np.ndarray, wins: np.ndarray) -> int:
    """The time window of rate r at a local time, or NONE. On a day with dated windows of
    the rate only those count; otherwise the weekly ones. Days: 1970-01-01 was a Thursday."""
    minute = (local_ms // MINUTE_MS) % 1440
    day = local_ms // DAY_MS
    weekday = (day + 3) % 7  # Monday = 0
    # One pass: the first dated window of the day that holds the minute wins at once; the
    # first weekly one only if no window is dated this day.
    weekly = NONE
    dated_day = False
    for w in range(rt[R_WIN_LO, r], rt[R_WIN_HI, r]):
        date = wins[W_DATE, w]
        if date == day:
            if wins[W_FROM, w] <= minute < wins[W_TO, w]:
                return w
            dated_day = True
        elif (date < 0 and weekly == NONE and (wins[W_DAYS, w] >> weekday) & 1
              and wins[W_FROM, w] <= minute < wins[W_TO, w]):
            weekly = w
    return NONE if dated_day else weekly


@helper
def next_change(r: int, local_ms: int, rt: np.ndarray, wins: np.ndarray) -> int:
    """The first local time after local_ms at which rate r's window changes (Tariff-Time-
    Change), or NO_BOUNDARY when it has no windows or none changes within HORIZON_DAYS."""
    if rt[R_WIN_LO, r] == rt[R_WIN_HI, r]:
        return NO_BOUNDARY
    current = window_at(r, local_ms, rt, wins)
    end = (local_ms // DAY_MS + HORIZON_DAYS) * DAY_MS
    t = local_ms
    while t < end:
        # The next candidate after t: a window edge later that day (a dated window's only on
        # its own day), else the next local midnight, where a dated day starts or ends.
        day = t // DAY_MS
        day_start = day * DAY_MS
        best = day_start + DAY_MS
        for w in range(rt[R_WIN_LO, r], rt[R_WIN_HI, r]):
            date = wins[W_DATE, w]
            if date >= 0 and date != day:
                continue
            for edge in (wins[W_FROM, w], wins[W_TO, w]):
                c = day_start + edge * MINUTE_MS
                if t < c < best:
                    best = c
        if window_at(r, best, rt, wins) != current:
            return best
        t = best
    return NO_BOUNDARY


@helper
def exceeds(k: int, price: int, total: int) -> bool:
    """Whether total + k * price (k > 0) is beyond int64."""
    if k < SMALL and 0 <= price < SMALL and 0 <= total < MONEY_LIMIT:
        return False  # the usual case, without a 64-bit division
    return price != 0 and k > (INT64_MAX - total) // price


@helper
def tiered_price(n: int, pos: int, r: int, rt: np.ndarray, tiers: np.ndarray) -> int:
    """Money for n increments whose first starts at cycle position `pos`; an increment is
    priced by the tier its start falls in. -1 on overflow."""
    inc = rt[R_INCREMENT, r]
    total = 0
    while n > 0:
        price = rt[R_PRICE, r]
        edge = NO_BOUNDARY
        for k in range(rt[R_TIER_LO, r], rt[R_TIER_HI, r]):
            if tiers[T_FROM, k] <= pos:
                price = tiers[T_PRICE, k]
            elif tiers[T_FROM, k] < edge:
                edge = tiers[T_FROM, k]
        take = n
        if edge != NO_BOUNDARY:
            take = min(n, (edge - pos + inc - 1) // inc)
        if exceeds(take, price, total):
            return -1
        total += take * price
        n -= take
        pos += take * inc
    return total


@helper
def split(n: int, part: int, whole: int) -> int:
    """floor(n * part / whole) for 0 <= part <= whole, without int64 overflow."""
    return (n // whole) * part + ((n % whole) * part) // whole


@helper
def price_span(units: int, r: int, start: int, end: int, pos: int, rt: np.ndarray,
               tiers: np.ndarray, wins: np.ndarray) -> int:
    """Money for `units` used over local times [start, end] from cycle position `pos`.
    Billable increments are split over the time windows in proportion to time (a call over
    19:00 is priced in two parts); outside windows the tiers apply. -1 on overflow."""
    inc = rt[R_INCREMENT, r]
    n = billable_increments(units, inc, rt[R_FIRST, r])
    if n == 0 or rt[R_FLAGS, r] & RATE_ZERO_RATED:
        return 0
    if exceeds(n, inc, 0):
        return -1
    if rt[R_WIN_LO, r] == rt[R_WIN_HI, r]:
        return tiered_price(n, pos, r, rt, tiers)  # no windows to split the time over
    if end <= start:
        start = end
    total = 0
    done = 0
    t = start
    while done < n:
        w = window_at(r, t, rt, wins)
        seg_end = end
        if end > start:
            seg_end = min(next_change(r, t, rt, wins), end)
            upto = n if seg_end >= end else split(n, (seg_end - start) // 1000,
                                                  max(1, (end - start) // 1000))
        else:
            upto = n
        k = upto - done
        if k > 0:
            if w != NONE:
                price = wins[W_PRICE, w]
                if exceeds(k, price, total):
                    return -1
                part = k * price
            else:
                part = tiered_price(k, pos + done * inc, r, rt, tiers)
                if part < 0 or part > INT64_MAX - total:
                    return -1
            total += part
            done = upto
        t = seg_end
    return total


@helper
def grant_price(units: int, r: int, t: int, pos: int, rt: np.ndarray, tiers: np.ndarray,
                wins: np.ndarray) -> int:
    """Money to reserve for granting `units` at local time t (a grant never spans a window
    change: its validity ends there)."""
    return price_span(units, r, t, t, pos, rt, tiers, wins)


@helper
def within_limits(used: int, target: int, r: int, money: int, price: np.ndarray,
                  increment: np.ndarray, first: np.ndarray, rt: np.ndarray) -> bool:
    """Whether pricing `used` and `target` units at rate r surely stays within MONEY_LIMIT
    and leaves the balance above -MONEY_LIMIT, without pricing them: one flat price (no
    tiers, no time windows), units and price below SMALL (fewer than SMALL increments at
    under SMALL each), and a balance not below zero. When it does not hold, the item is
    priced in full to check."""
    return (rt[R_TIER_LO, r] == rt[R_TIER_HI, r] and rt[R_WIN_LO, r] == rt[R_WIN_HI, r]
            and 0 <= price[r] < SMALL and 0 < increment[r] < SMALL and 0 <= first[r] < SMALL
            and 0 <= used < SMALL and 0 <= target < SMALL and money >= 0)


@helper
def bucket_applies(b: int, rg: int, unit_type: int, time_ms: int, buckets: np.ndarray,
                   bucket_rgs: np.ndarray) -> bool:
    if buckets[B_UNIT, b] != unit_type:
        return False
    if buckets[B_EXPIRY, b] != 0 and buckets[B_EXPIRY, b] <= time_ms:
        return False
    for k in range(buckets[B_RG_LO, b], buckets[B_RG_HI, b]):
        if bucket_rgs[k] == rg:
            return True
    return False


@helper
def percent_level(used: int, size: int) -> int:
    """Highest of 50 / 80 / 100 % reached (0 if none); exact integer comparison."""
    if size <= 0:
        return 0
    if used >= size:
        return 100
    if used * 5 >= size * 4:
        return 80
    if used * 2 >= size:
        return 50
    return 0


@helper
def money_room(a: int, m: int, money: np.ndarray, floor: np.ndarray, cap: np.ndarray,
               spent: np.ndarray, mres: np.ndarray, m_cap: np.ndarray, m_spent: np.ndarray,
               m_mres: np.ndarray) -> tuple[int, bool, bool]:
    """Money a grant may take: down to the floor, within the cycle's spending cap (spend +
    reservations) and the member's money cap; and whether the cap or the member's cap is
    what limits it."""
    room = money[a] - floor[a]
    cap_bound = False
    member_bound = False
    if cap[a] > 0 and cap[a] - spent[a] - mres[a] < room:
        room = cap[a] - spent[a] - mres[a]
        cap_bound = True
    if m != NONE and m_cap[m] > 0:
        m_room = m_cap[m] - m_spent[m] - m_mres[m]
        member_bound = m_room < room
        room = min(room, m_room)
    return room, cap_bound, member_bound


@helper
def emit(ev: np.ndarray, n: int, item: int, kind: int, ref: int, level: int, value: int,
         limit: int) -> int:
    """Appends an event column; returns the new count."""
    ev[0, n] = item
    ev[1, n] = kind
    ev[2, n] = ref
    ev[3, n] = level
    ev[4, n] = value
    ev[5, n] = limit
    return n + 1


@njit(cache=True, nogil=True)
def charge_kernel(
    items: np.ndarray,         # I_* rows, a column per item
    rates: tuple,              # see engine.plans.RateTable.arrays
    accounts: np.ndarray,      # A_* rows, a column per account
    buckets: np.ndarray,       # B_* rows, a column per bucket (grouped by account, in order)
    bucket_rgs: np.ndarray,    # the buckets' rating groups, bucket b's in [B_RG_LO, B_RG_HI)
    members: np.ndarray,       # M_* rows, a column per member
    member_units: np.ndarray,  # U_* rows, a column per (member, unit type - 1): 3 per member
    cycle_units: np.ndarray,   # units billed this cycle per (account, rating group) slot
) -> tuple:
    """Runs every item in batch order; items of one account see each other's effects.

    Per item: give back its current reservation; charge the used units (buckets in order,
    then money, priced over the time the usage took; usage is never refused, control is at
    grant time); then grant from the first bucket with units left, else from money, within
    balance + credit limit, the cycle's spending cap and the member's caps. A direct debit
    (EVENT) is all or nothing. Thresholds crossed become events. Returns new arrays only:
    the item outcomes (result, granted, reservation source, reserved, charged, validity,
    final), the accounts' first 6 rows, the buckets' (remaining, reserved change, level), the
    members' money (spent, reserved) and units (used, reserved), cycle units, charges (item,
    source, units, money) and events (item, kind, ref, level, value, limit), a column each.
    Several rows in one array: each array crossing into Python costs microseconds.
    """
    rt, tiers, wins = rates
    rate_price, rate_increment, rate_first = rt[R_PRICE], rt[R_INCREMENT], rt[R_FIRST]
    rate_quota, rate_unit, rate_validity = rt[R_QUOTA], rt[R_UNIT], rt[R_VALIDITY]
    rate_flags = rt[R_FLAGS]
    i_acct, i_member, i_rg, i_rate = items[I_ACCT], items[I_MEMBER], items[I_RG], items[I_RATE]
    i_start, i_time, i_used, i_want = items[I_START], items[I_TIME], items[I_USED], items[I_WANT]
    i_requested, i_flags, i_res_src = items[I_REQUESTED], items[I_FLAGS], items[I_RES_SRC]
    i_res_units, i_res_amount = items[I_RES_UNITS], items[I_RES_AMOUNT]
    i_cu, i_offset = items[I_CYCLE_SLOT], items[I_OFFSET]
    a_floor, a_cap, a_low_mark = accounts[A_FLOOR], accounts[A_CAP], accounts[A_LOW_MARK]
    a_first, a_end = accounts[A_BUCKETS_LO], accounts[A_BUCKETS_HI]
    b_initial = buckets[B_INITIAL]
    m_cap_money, m_cap_units = members[M_CAP], member_units[U_CAP]

    n = items.shape[1]
    out = np.zeros((7, n), dtype=np.int64)
    result, granted, res_src, res_amount = out[0], out[1], out[2], out[3]
    charged, validity, final = out[4], out[5], out[6]
    result[:] = SUCCESS
    res_src[:] = MONEY
    acct_out = accounts[:6].copy()
    money, mres, spent = acct_out[A_MONEY], acct_out[A_MRES], acct_out[A_SPENT]
    cap_level, low_flag = acct_out[A_CAP_LEVEL], acct_out[A_LOW_FLAG]
    exh_flag = acct_out[A_EXH_FLAG]
    bucket_out = np.zeros((3, buckets.shape[1]), dtype=np.int64)
    remaining, b_reserved, level = bucket_out[0], bucket_out[1], bucket_out[2]
    remaining[:] = buckets[B_REMAINING]
    level[:] = buckets[B_LEVEL]
    member_out = members[M_SPENT:].copy()
    mspent, mmres = member_out[0], member_out[1]
    units_out = member_units[U_USED:].copy()
    mused, mres_u = units_out[0], units_out[1]
    cu = cycle_units.copy()

    cap = 0
    for i in range(n):
        a = i_acct[i]
        cap += a_end[a] - a_first[a] + 1
    chg = np.empty((4, cap), dtype=np.int64)  # (item, source, units, money)
    n_chg = 0
    ev = np.empty((6, 4 * n + 4 * cap), dtype=np.int64)  # (item, kind, ref, level, value, limit)
    n_ev = 0

    for i in range(n):
        a = i_acct[i]
        m = i_member[i]
        r = i_rate[i]
        rg = i_rg[i]
        used = i_used[i]
        want = i_want[i]
        # Give back what the session holds for this rating group (and what it counted against
        # the member's caps, if it was taken as a member).
        counted = m != NONE and i_flags[i] & FLAG_RES_MEMBER
        if i_res_amount[i] != 0 or i_res_units[i] != 0:
            s = i_res_src[i]
            if s == MONEY:
                money[a] += i_res_amount[i]
                mres[a] -= i_res_amount[i]
                if counted:
                    mmres[m] -= i_res_amount[i]
            else:
                remaining[s] += i_res_amount[i]
                b_reserved[s] -= i_res_amount[i]
            if counted and r != NONE:
                mres_u[m * 3 + rate_unit[r] - 1] -= i_res_units[i]
        if r == NONE:
            result[i] = RATING_FAILED
            continue
        if rate_flags[r] & RATE_NOT_ALLOWED:
            result[i] = END_USER_SERVICE_DENIED
            continue
        unit = rate_unit[r]
        zero = rate_flags[r] & RATE_ZERO_RATED
        mu = m * 3 + unit - 1 if m != NONE else NONE
        target = rate_quota[r]
        if want == WANT_DEBIT:
            target = used
        elif 0 < i_requested[i] < target:
            target = i_requested[i]
        t = i_time[i]
        utc = t - i_offset[i]  # bucket expiry is an instant; t is local time
        pos = cu[i_cu[i]]
        if not within_limits(used, target, r, money[a], rate_price, rate_increment, rate_first,
                             rt):
            # Priced in full only when the cheap bound does not hold (most items are priced
            # later only if buckets do not cover them).
            cost_used = price_span(used, r, i_start[i], t, pos, rt, tiers, wins)
            cost_target = 0
            if want != WANT_NONE:
                cost_target = grant_price(target, r, t, pos, rt, tiers, wins)
            if (cost_used < 0 or cost_target < 0 or cost_used > MONEY_LIMIT
                    or cost_target > MONEY_LIMIT or money[a] - cost_used < -MONEY_LIMIT):
                result[i] = INVALID_AVP_VALUE  # amounts beyond int64 arithmetic
                continue
        if want != WANT_NONE and i_flags[i] & FLAG_GRACE and not zero:
            result[i] = END_USER_SERVICE_DENIED  # GRACE: zero-rated service only
            if want == WANT_DEBIT or used == 0:
                continue
            want = WANT_NONE

        if want == WANT_DEBIT:
            # Direct debit: refuse unless buckets and money within all limits cover it all.
            covered = 0
            for b in range(a_first[a], a_end[a]):
                if covered < used and bucket_applies(b, rg, unit, utc, buckets, bucket_rgs):
                    covered += min(remaining[b], used - covered)
            cost = 0
            if covered < used:
                cost = price_span(used - covered, r, i_start[i], t, pos, rt, tiers, wins)
            room, _, _ = money_room(a, m, money, a_floor, a_cap, spent, mres, m_cap_money, mspent,
                                    mmres)
            if (cost > 0 and cost > room) or (
                    m != NONE and m_cap_units[mu] > 0
                    and used > m_cap_units[mu] - mused[mu] - mres_u[mu]):
                result[i] = CREDIT_LIMIT_REACHED
                continue
            granted[i] = used

        # Charge the used units: buckets in consumption order, then money.
        left = used
        last = NONE  # the last bucket charged
        for b in range(a_first[a], a_end[a]):
            if left == 0:
                break
            if remaining[b] > 0 and bucket_applies(b, rg, unit, utc, buckets, bucket_rgs):
                last = b
                take = min(left, remaining[b])
                remaining[b] -= take
                left -= take
                chg[0, n_chg] = i
                chg[1, n_chg] = b
                chg[2, n_chg] = take
                chg[3, n_chg] = 0
                n_chg += 1
        if left > 0:
            cost = price_span(left, r, i_start[i], t, pos, rt, tiers, wins)
            money[a] -= cost
            spent[a] += cost
            charged[i] = cost
            chg[0, n_chg] = i
            chg[1, n_chg] = MONEY
            chg[2, n_chg] = left
            chg[3, n_chg] = cost
            n_chg += 1
            if m != NONE:
                mspent[m] += cost
            if not zero:
                cu[i_cu[i]] += billable_increments(left, rate_increment[r],
                                                   rate_first[r]) * rate_increment[r]
        if m != NONE:
            mused[mu] += used

        if want == WANT_GRANT:
            pos = cu[i_cu[i]]
            unit_room = NO_BOUNDARY
            if m != NONE and m_cap_units[mu] > 0:
                unit_room = m_cap_units[mu] - mused[mu] - mres_u[mu]
                if unit_room < target:
                    target = max(unit_room, 0)
            g = 0
            src = MONEY
            member_bound = unit_room <= 0
            cap_bound = False
            if target > 0:
                # The first bucket that applies and has units: the charge above drained every
                # one before the last it took from, so the search starts there.
                if last != NONE and remaining[last] > 0:
                    g = min(target, remaining[last])
                    src = last
                else:
                    for b in range(a_first[a] if last == NONE else last + 1, a_end[a]):
                        if remaining[b] > 0 and bucket_applies(b, rg, unit, utc, buckets,
                                                               bucket_rgs):
                            g = min(target, remaining[b])
                            src = b
                            break
            if src != MONEY:
                remaining[src] -= g
                b_reserved[src] += g
                res_amount[i] = g
            elif target > 0:
                room, cap_bound, member_bound = money_room(a, m, money, a_floor, a_cap, spent,
                                                           mres, m_cap_money, mspent, mmres)
                g = target
                cost = grant_price(g, r, t, pos, rt, tiers, wins)
                if cost > room and cost > 0:
                    # The most whole increments the room pays for (price rises with units):
                    # a division for a flat price, a binary search over tiers.
                    lo = 0
                    hi = (g + rate_increment[r] - 1) // rate_increment[r]
                    w = window_at(r, t, rt, wins)
                    if w != NONE or rt[R_TIER_LO, r] == rt[R_TIER_HI, r]:
                        flat = wins[W_PRICE, w] if w != NONE else rate_price[r]
                        lo = min(hi, max(room, 0) // flat)
                        hi = lo
                    while lo < hi:
                        mid = (lo + hi + 1) // 2
                        c = grant_price(mid * rate_increment[r], r, t, pos, rt, tiers, wins)
                        if c <= room:
                            lo = mid
                        else:
                            hi = mid - 1
                    g = min(lo * rate_increment[r], g)
                    cost = grant_price(g, r, t, pos, rt, tiers, wins)
                    if g <= 0 or cost > room:
                        g = 0
                if g > 0:
                    money[a] -= cost
                    mres[a] += cost
                    res_amount[i] = cost
                    if m != NONE:
                        mmres[m] += cost
                    exh_flag[a] = 0
            if g <= 0:
                result[i] = CREDIT_LIMIT_REACHED
                if member_bound:
                    # value: which limit (0 = money, else the unit type); limit: the cap
                    if unit_room <= 0:
                        n_ev = emit(ev, n_ev, i, EV_MEMBER_CAP, m, 100, unit, m_cap_units[mu])
                    else:
                        n_ev = emit(ev, n_ev, i, EV_MEMBER_CAP, m, 100, 0, m_cap_money[m])
                elif exh_flag[a] == 0 and not cap_bound:
                    exh_flag[a] = 1
                    n_ev = emit(ev, n_ev, i, EV_EXHAUSTED, NONE, 0, money[a],
                                a_floor[a])
            else:
                granted[i] = g
                res_src[i] = src
                if m != NONE:
                    mres_u[mu] += g
                # Checked here, not only inside: inlined whole into the item loop, the
                # window search slowed every item (about 5 µs per 1024), windows or not.
                change = (next_change(r, t, rt, wins) if rt[R_WIN_LO, r] != rt[R_WIN_HI, r]
                          else NO_BOUNDARY)
                v = rate_validity[r]
                if change != NO_BOUNDARY:
                    to_change = max(1, (change - t) // 1000)
                    if v == 0 or to_change < v:
                        v = to_change
                validity[i] = v
                # Final units: nothing more could be granted after these.
                more = zero != 0
                if not more and (unit_room == NO_BOUNDARY or unit_room - g > 0):
                    # The bucket just granted from applies: if it has units left, that is it.
                    more = src != MONEY and remaining[src] > 0
                    if not more:
                        for b in range(a_first[a], a_end[a]):
                            if remaining[b] > 0 and bucket_applies(b, rg, unit, utc, buckets,
                                                                   bucket_rgs):
                                more = True
                                break
                    if not more:
                        room, _, _ = money_room(a, m, money, a_floor, a_cap, spent, mres,
                                                m_cap_money, mspent, mmres)
                        least = grant_price(max(rate_first[r], rate_increment[r]), r, t, pos,
                                            rt, tiers, wins)
                        more = least <= room
                if not more:
                    final[i] = 1
                    n_ev = emit(ev, n_ev, i, EV_FINAL, NONE, 0, g,
                                0)

        # Thresholds this item took the account across, each announced once per cycle.
        for b in range(a_first[a], a_end[a]):
            lv = percent_level(b_initial[b] - remaining[b], b_initial[b])
            for step in (50, 80, 100):
                if level[b] < step <= lv:
                    n_ev = emit(ev, n_ev, i, EV_BUCKET, b, step, b_initial[b] - remaining[b],
                                b_initial[b])
            if lv > level[b]:
                level[b] = lv
        if a_cap[a] > 0:
            lv = percent_level(spent[a] + mres[a], a_cap[a])
            for step in (80, 100):
                if cap_level[a] < step <= lv:
                    n_ev = emit(ev, n_ev, i, EV_CAP, NONE, step, spent[a] + mres[a],
                                a_cap[a])
            if lv > cap_level[a]:
                cap_level[a] = lv
        if a_low_mark[a] > 0:
            if money[a] < a_low_mark[a] and low_flag[a] == 0:
                low_flag[a] = 1
                n_ev = emit(ev, n_ev, i, EV_LOW, NONE, 0, money[a],
                            a_low_mark[a])
            elif money[a] >= a_low_mark[a]:
                low_flag[a] = 0

    return (out, acct_out, bucket_out, member_out, units_out, cu, chg[:, :n_chg], ev[:, :n_ev])
