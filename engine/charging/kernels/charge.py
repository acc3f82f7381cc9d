"""The charging kernel: price, commit, release and grant a batch of items in batch order."""

from __future__ import annotations

import numpy as np
from numba import njit

INT64_MAX = np.iinfo(np.int64).max
MONEY_LIMIT = 2**62
"""No single charge may exceed this, nor take a balance below -MONEY_LIMIT (no int64 wrap)."""
SMALL = 2**31
"""Two factors below this have a product below 2**62."""
HALF = 2**30

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
RATE_ZERO_RATED, RATE_NOT_ALLOWED, RATE_SESSION_FREE, RATE_FLAT_SMALL = 1, 2, 4, 8  # rate flags
ROUND_UP, ROUND_HALF_EVEN, ROUND_DOWN = 0, 1, 2  # a rate's rounding of money (R_ROUNDING)

# Event kinds (values of tollgate.v1.EventKind).
EV_BUCKET, EV_CAP, EV_LOW, EV_EXHAUSTED, EV_FINAL, EV_MEMBER_CAP = 1, 2, 3, 4, 5, 6

MINUTE_MS = 60_000
DAY_MS = 86_400_000
NO_BOUNDARY = INT64_MAX // 4
HORIZON_DAYS = 9
"""next_change looks this many local days ahead (from the day it starts in): over a week,
so a weekly window always shows its next change; a dated window further off bounds nothing."""

# Rows of the `rates` tuple's arrays (see engine.rating.plans.RateTable.arrays): the rate table
# (a column per rate), tiers, windows and steps (a column each, the rate's in [LO, HI)).
# R_PER: the price is per this many units; R_FEE: connect fee per session and rating group;
# R_SESSION_MAX: the most one session may cost (0 = no limit; flag RATE_SESSION_FREE: the
# session goes on free at it, else its last grant is final). R_GRID_MUL, R_GRID_SHIFT: the
# increment's reciprocal (grid_reciprocal; 0 for a rate with steps).
(R_PRICE, R_INCREMENT, R_FIRST, R_QUOTA, R_UNIT, R_VALIDITY, R_FLAGS, R_TIER_LO, R_TIER_HI,
 R_WIN_LO, R_WIN_HI, R_PER, R_ROUNDING, R_FEE, R_STEP_LO, R_STEP_HI, R_SESSION_MAX,
 R_GRID_MUL, R_GRID_SHIFT) = range(19)
T_FROM, T_PRICE = 0, 1
W_DAYS, W_FROM, W_TO, W_PRICE, W_DATE = 0, 1, 2, 3, 4  # W_DATE: local day number, -1 weekly
S_FROM, S_INCREMENT = 0, 1
# Rows of the kernel's other 2-D inputs (a few 2-D arrays cross into Numba faster than many
# 1-D ones), but the items': their columns, a row per item, so that one item's fields share
# a cache line or two (as 21 rows they were 21 memory streams: 1024 items took 25 % longer).
# The accounts' first six are also its account outputs, in this order.
# I_NOW: the server's clock (UTC ms), which alone judges bucket expiry. I_S_*: what the
# session has reported, billed and been charged for the rating group so far (cumulative
# pricing), the rounding's remainder (in price units x R_PER), and the whole session's cost
# before this request (I_REQ: items of one request are consecutive and share it).
(I_ACCT, I_MEMBER, I_RG, I_RATE, I_START, I_TIME, I_USED, I_WANT, I_REQUESTED, I_FLAGS,
 I_RES_SRC, I_RES_UNITS, I_RES_AMOUNT, I_CYCLE_SLOT, I_NOW, I_S_USED, I_S_BILLED, I_S_REM,
 I_S_CHARGED, I_S_COST, I_REQ) = range(21)
(A_MONEY, A_MRES, A_SPENT, A_CAP_LEVEL, A_LOW_FLAG, A_EXH_FLAG, A_FLOOR, A_CAP, A_LOW_MARK,
 A_BUCKETS_LO, A_BUCKETS_HI) = range(11)
B_REMAINING, B_UNIT, B_EXPIRY, B_INITIAL, B_LEVEL, B_RG_LO, B_RG_HI = range(7)
M_CAP, M_SPENT, M_MRES = range(3)
U_CAP, U_USED, U_RES = range(3)
# Rows of the item outputs.
# O_S_*: the session's rating-group state after the item, written when the item was billed
# (all zero: unchanged).
(O_RESULT, O_GRANTED, O_RES_SRC, O_RES_AMOUNT, O_CHARGED, O_VALIDITY, O_FINAL, O_S_USED,
 O_S_BILLED, O_S_REM, O_S_CHARGED) = range(11)

helper = njit(cache=True, nogil=True, forceinline=True, _nrt=False)  # type: ignore[call-overload]
"""For the kernels' helpers, which allocate nothing. Compiled without Numba's runtime (`_nrt`,
an option its type stubs lack), their array arguments are not reference-counted on every
call: those atomic increments and decrements were over half of the kernel's time. Inlined,
they cost no call either (another third of what was left)."""


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


def grid_reciprocal(increment: int, steps: int) -> tuple[int, int]:
    """(mul, shift) with (x * mul) >> shift == x // increment for every 0 <= x < HALF, for a
    rate without steps (`steps`: how many it has) and an increment below HALF; else (0, 0).
    billed_units rounds up to the increment with it: a multiplication where a division took
    a third of the usual item's time. Exact: with l = ceil(log2(increment)), shift = 30 + l
    and mul = ceil(2**shift / increment) = (2**shift + e) / increment, 0 <= e < increment,
    x * mul / 2**shift = x / increment + x * e / (increment * 2**shift), and x * e < 2**shift,
    so the excess stays below 1 / increment and the floor is the quotient; mul <= 2**31 + 1,
    so x * mul < 2**62."""
    if steps or not 0 < increment < HALF:
        return 0, 0
    shift = 30 + (increment - 1).bit_length()
    return -(-(1 << shift) // increment), shift


@helper
def billed_units(used: int, r: int, rt: np.ndarray, steps: np.ndarray) -> int:
    """Units billed for a session's cumulative usage of a rating group: at least the first
    increment, rounded up to the step grid (the rate's increment from 0, each step's own from
    its from_units on; each from_units lies on the grid before it, so this only rises)."""
    if used <= 0:
        return 0
    if used < rt[R_FIRST, r]:
        used = rt[R_FIRST, r]
    inc = rt[R_INCREMENT, r]
    mul = rt[R_GRID_MUL, r]
    if mul != 0 and used < HALF - inc:
        return ((used + inc - 1) * mul >> rt[R_GRID_SHIFT, r]) * inc
    base = 0
    for s in range(rt[R_STEP_LO, r], rt[R_STEP_HI, r]):
        if used <= steps[S_FROM, s]:
            break
        base = steps[S_FROM, s]
        inc = steps[S_INCREMENT, s]
    return base + (used - base + inc - 1) // inc * inc


@helper
def usage_within(billed: int, r: int, rt: np.ndarray, steps: np.ndarray) -> int:
    """The most cumulative usage that bills at most `billed` units (billed_units' inverse): the
    last grid point at or below it, or 0 below the first billed amount."""
    if billed < billed_units(1, r, rt, steps):
        return 0
    base = 0
    inc = rt[R_INCREMENT, r]
    for s in range(rt[R_STEP_LO, r], rt[R_STEP_HI, r]):
        if billed < steps[S_FROM, s]:
            break
        base = steps[S_FROM, s]
        inc = steps[S_INCREMENT, s]
    return base + (billed - base) // inc * inc


@helper
def exceeds(k: int, price: int, total: int) -> bool:
    """Whether total + k * price (k > 0) is beyond int64."""
    if k < SMALL and 0 <= price < SMALL and 0 <= total < MONEY_LIMIT:
        return False  # the usual case, without a 64-bit division
    return price != 0 and k > (INT64_MAX - total) // price


@helper
def tiered_value(units: int, pos: int, r: int, rt: np.ndarray, tiers: np.ndarray) -> int:
    """Sum of price x units for `units` billed from cycle position `pos` on, each unit at the
    price of the tier it falls in. -1 on overflow."""
    total = 0
    while units > 0:
        price = rt[R_PRICE, r]
        edge = NO_BOUNDARY
        for k in range(rt[R_TIER_LO, r], rt[R_TIER_HI, r]):
            if tiers[T_FROM, k] <= pos:
                price = tiers[T_PRICE, k]
            elif tiers[T_FROM, k] < edge:
                edge = tiers[T_FROM, k]
        take = units if edge == NO_BOUNDARY else min(units, edge - pos)
        if exceeds(take, price, total):
            return -1
        total += take * price
        units -= take
        pos += take
    return total


@helper
def split(n: int, part: int, whole: int) -> int:
    """floor(n * part / whole) for 0 <= part <= whole, without int64 overflow."""
    return (n // whole) * part + ((n % whole) * part) // whole


@helper
def span_value(units: int, r: int, start: int, end: int, pos: int, rt: np.ndarray,
               tiers: np.ndarray, wins: np.ndarray) -> int:
    """Sum of price x units (prices are per R_PER units) for `units` billed units used over
    local times [start, end] from cycle position `pos`: the units are split over the time
    windows in proportion to time (a call over 19:00 is priced in two parts); outside
    windows the tiers apply. -1 on overflow."""
    if units <= 0 or rt[R_FLAGS, r] & RATE_ZERO_RATED:
        return 0
    if rt[R_WIN_LO, r] == rt[R_WIN_HI, r]:
        return tiered_value(units, pos, r, rt, tiers)  # no windows to split the time over
    if end <= start:
        start = end
    total = 0
    done = 0
    t = start
    while done < units:
        w = window_at(r, t, rt, wins)
        seg_end = end
        upto = units
        if end > start:
            seg_end = min(next_change(r, t, rt, wins), end)
            if seg_end < end:
                upto = split(units, (seg_end - start) // 1000, max(1, (end - start) // 1000))
        k = upto - done
        if k > 0:
            if w != NONE:
                price = wins[W_PRICE, w]
                if exceeds(k, price, total):
                    return -1
                part = k * price
            else:
                part = tiered_value(k, pos + done, r, rt, tiers)
                if part < 0 or part > INT64_MAX - total:
                    return -1
            total += part
            done = upto
        t = seg_end
    return total


@helper
def rounded(value: int, per: int, method: int, charged: int) -> int:
    """value / per in whole micro-units by the rate's rounding method. Half-even looks at the
    session's whole charge (`charged` so far plus this), as if its cumulative value were
    rounded at once."""
    q = value // per
    rest = value - q * per
    if rest == 0 or method == ROUND_DOWN:
        return q
    if method == ROUND_UP or 2 * rest > per:
        return q + 1
    return q + 1 if 2 * rest == per and (charged + q) % 2 == 1 else q


@helper
def money_for(units: int, r: int, start: int, end: int, pos: int, rem: int, charged: int,
              rt: np.ndarray, tiers: np.ndarray, wins: np.ndarray) -> tuple[int, int]:
    """Money for `units` billed units of a session whose rounding so far left `rem` (price x
    units not yet charged, may be negative) and charged `charged`: (money, new remainder).
    The session's cumulative value is rounded, so nothing accumulates across reports.
    (-1, rem) on overflow."""
    value = span_value(units, r, start, end, pos, rt, tiers, wins)
    if value < 0 or value > INT64_MAX - MONEY_LIMIT:
        return -1, rem
    per = rt[R_PER, r]
    value += rem
    q = rounded(value, per, rt[R_ROUNDING, r], charged)
    if q < 0:
        q = 0  # a remainder left by an earlier plan version's units: never a refund here
    return q, value - q * per


@helper
def price_span(units: int, r: int, start: int, end: int, pos: int, rt: np.ndarray,
               tiers: np.ndarray, wins: np.ndarray) -> int:
    """Money for `units` billed units on their own (no session before them). -1 on overflow."""
    return money_for(units, r, start, end, pos, 0, 0, rt, tiers, wins)[0]


@helper
def grant_cost(g: int, r: int, t: int, pos: int, used: int, billed: int, rem: int,
               charged: int, fee: int, smax: int, scost: int, free_at_max: int,
               rt: np.ndarray, tiers: np.ndarray, wins: np.ndarray, steps: np.ndarray) -> int:
    """Money to hold for granting g more units to a session that has used and billed this
    much: the billed units they add, priced at local time t (a grant never spans a window
    change), with the connect fee `fee` when they are its first; no more than the session may
    still cost when it goes on free at its maximum."""
    need = billed_units(used + g, r, rt, steps) - billed
    if need <= 0:
        return 0
    cost = fee + money_for(need, r, t, t, pos, rem, charged, rt, tiers, wins)[0]
    if smax > 0 and free_at_max:
        cost = min(cost, max(smax - scost, 0))
    return cost


@helper
def least_grant(r: int, t: int, pos: int, rt: np.ndarray, tiers: np.ndarray, wins: np.ndarray,
                steps: np.ndarray) -> int:
    """Money for the least a new session could be granted at local time t (its first billed
    units), -1 on overflow."""
    return price_span(billed_units(1, r, rt, steps), r, t, t, pos, rt, tiers, wins)


def flat_and_small(price: int, increment: int, first: int, fee: int, parts: int) -> bool:
    """Whether a rate has one flat price (`parts`: its tiers, windows and steps, none) and
    increments and price below HALF, the fee below SMALL: items of such a rate with units
    below HALF price within limits (fewer than SMALL billed units at under HALF each).
    Worked out once per rate (RATE_FLAT_SMALL), not per item."""
    return (parts == 0 and 0 <= price < HALF and 0 < increment < HALF and 0 <= first < HALF
            and 0 <= fee < SMALL)


@helper
def within_limits(used: int, target: int, flags: int, money: int) -> bool:
    """Whether pricing `used` and `target` more units at a rate with these flags surely stays
    within MONEY_LIMIT and leaves the balance above -MONEY_LIMIT, without pricing them: a
    RATE_FLAT_SMALL rate, units below HALF and a balance not below zero. When it does not
    hold, the item is priced in full to check."""
    return (flags & RATE_FLAT_SMALL != 0 and 0 <= used < HALF and 0 <= target < HALF
            and money >= 0)


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


@helper
def charge_item(i: int, fee: int, smax: int, items: np.ndarray, rates: tuple,
                accounts: np.ndarray, buckets: np.ndarray, bucket_rgs: np.ndarray,
                members: np.ndarray, member_units: np.ndarray, out: np.ndarray,
                acct_out: np.ndarray, bucket_out: np.ndarray, member_out: np.ndarray,
                units_out: np.ndarray, cu: np.ndarray, chg: np.ndarray, n_chg: int,
                ev: np.ndarray, n_ev: int) -> tuple[int, int]:
    """Item i of charge_kernel (its loop body, described there), given its rate's connect
    fee (0 when zero-rated) and session maximum: the kernel passes literal zeros for a rate
    with neither. Returns the new counts of charges (n_chg) and events (n_ev)."""
    rt, tiers, wins, steps = rates
    rate_quota, rate_unit, rate_validity = rt[R_QUOTA], rt[R_UNIT], rt[R_VALIDITY]
    rate_flags = rt[R_FLAGS]
    i_acct, i_member, i_rg = items[:, I_ACCT], items[:, I_MEMBER], items[:, I_RG]
    i_rate, i_start, i_time = items[:, I_RATE], items[:, I_START], items[:, I_TIME]
    i_used, i_want, i_requested = items[:, I_USED], items[:, I_WANT], items[:, I_REQUESTED]
    i_flags, i_res_src = items[:, I_FLAGS], items[:, I_RES_SRC]
    i_res_units, i_res_amount = items[:, I_RES_UNITS], items[:, I_RES_AMOUNT]
    i_cu, i_now, i_req = items[:, I_CYCLE_SLOT], items[:, I_NOW], items[:, I_REQ]
    a_floor, a_cap, a_low_mark = accounts[A_FLOOR], accounts[A_CAP], accounts[A_LOW_MARK]
    a_first, a_end = accounts[A_BUCKETS_LO], accounts[A_BUCKETS_HI]
    b_initial = buckets[B_INITIAL]
    m_cap_money, m_cap_units = members[M_CAP], member_units[U_CAP]
    result, granted, res_src, res_amount = out[O_RESULT], out[O_GRANTED], out[O_RES_SRC], \
        out[O_RES_AMOUNT]
    charged, validity, final = out[O_CHARGED], out[O_VALIDITY], out[O_FINAL]
    money, mres, spent = acct_out[A_MONEY], acct_out[A_MRES], acct_out[A_SPENT]
    cap_level, low_flag = acct_out[A_CAP_LEVEL], acct_out[A_LOW_FLAG]
    exh_flag = acct_out[A_EXH_FLAG]
    remaining, b_reserved, level = bucket_out[0], bucket_out[1], bucket_out[2]
    mspent, mmres = member_out[0], member_out[1]
    mused, mres_u = units_out[0], units_out[1]

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
        back = money[a] if s == MONEY else remaining[s]
        if i_res_amount[i] < 0 or back > INT64_MAX - i_res_amount[i]:
            # Giving it back would wrap int64: the item is refused and the session keeps
            # its reservation (reported as held: granted, source, amount), nothing moves.
            result[i] = INVALID_AVP_VALUE
            granted[i], res_src[i], res_amount[i] = i_res_units[i], s, i_res_amount[i]
            return n_chg, n_ev
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
        return n_chg, n_ev
    if rate_flags[r] & RATE_NOT_ALLOWED:
        result[i] = END_USER_SERVICE_DENIED
        return n_chg, n_ev
    unit = rate_unit[r]
    zero = rate_flags[r] & RATE_ZERO_RATED
    free_at_max = rate_flags[r] & RATE_SESSION_FREE
    scost = 0  # what the session cost before this item, when it has a maximum
    if smax > 0:
        scost = items[i, I_S_COST]
        j = i - 1
        while j >= 0 and i_req[j] == i_req[i]:
            scost += charged[j]
            j -= 1
    mu = m * 3 + unit - 1 if m != NONE else NONE
    target = rate_quota[r]
    if want == WANT_DEBIT:
        target = used
    elif 0 < i_requested[i] < target:
        target = i_requested[i]
    t = i_time[i]
    now = i_now[i]
    pos = cu[i_cu[i]]
    s_used, s_billed = items[i, I_S_USED], items[i, I_S_BILLED]
    s_rem, s_charged = items[i, I_S_REM], items[i, I_S_CHARGED]
    if used > MONEY_LIMIT - s_used or target > MONEY_LIMIT - s_used - used:
        result[i] = INVALID_AVP_VALUE  # a session's units beyond int64 arithmetic
        return n_chg, n_ev
    new_used = s_used + used
    new_billed = max(s_billed, billed_units(new_used, r, rt, steps))
    billed = new_billed - s_billed  # what this report bills: the session's minimum and
    # rounding are met once, by buckets and money together
    first_fee = fee if s_billed == 0 and billed > 0 else 0
    if not within_limits(used, target, rate_flags[r], money[a]):
        # Priced in full only when the cheap bound does not hold (most items are priced
        # later only if buckets do not cover them).
        cost_used = money_for(billed, r, i_start[i], t, pos, s_rem, s_charged, rt, tiers,
                              wins)[0]
        cost_target = 0
        if want != WANT_NONE:
            cost_target = money_for(
                billed_units(new_used + target, r, rt, steps) - new_billed, r, t, t, pos,
                0, 0, rt, tiers, wins)[0]
        if (cost_used < 0 or cost_target < 0 or cost_used > MONEY_LIMIT - fee
                or cost_target > MONEY_LIMIT - fee
                or money[a] - cost_used - first_fee < -MONEY_LIMIT):
            result[i] = INVALID_AVP_VALUE  # amounts beyond int64 arithmetic
            return n_chg, n_ev
    if want != WANT_NONE and i_flags[i] & FLAG_GRACE and not zero:
        result[i] = END_USER_SERVICE_DENIED  # GRACE: zero-rated service only
        if want == WANT_DEBIT or used == 0:
            return n_chg, n_ev
        want = WANT_NONE

    if want == WANT_DEBIT:
        # Direct debit: refuse unless buckets and money within all limits cover it all.
        covered = 0
        for b in range(a_first[a], a_end[a]):
            if covered < billed and bucket_applies(b, rg, unit, now, buckets, bucket_rgs):
                covered += min(remaining[b], billed - covered)
        cost = first_fee
        if covered < billed and not zero:
            cost += money_for(billed - covered, r, i_start[i], t, pos, s_rem, s_charged, rt,
                              tiers, wins)[0]
        if smax > 0:
            cost = min(cost, max(smax - scost, 0))
        room, _, _ = money_room(a, m, money, a_floor, a_cap, spent, mres, m_cap_money, mspent,
                                mmres)
        if (cost > 0 and cost > room) or (
                m != NONE and m_cap_units[mu] > 0
                and used > m_cap_units[mu] - mused[mu] - mres_u[mu]):
            result[i] = CREDIT_LIMIT_REACHED
            return n_chg, n_ev
        granted[i] = used

    # Pay the billed units: buckets in consumption order, then money.
    left = billed
    last = NONE  # the last bucket charged
    for b in range(a_first[a], a_end[a]):
        if left == 0:
            break
        if remaining[b] > 0 and bucket_applies(b, rg, unit, now, buckets, bucket_rgs):
            last = b
            take = min(left, remaining[b])
            remaining[b] -= take
            left -= take
            chg[0, n_chg] = i
            chg[1, n_chg] = b
            chg[2, n_chg] = take
            chg[3, n_chg] = 0
            n_chg += 1
    cost = first_fee
    if left > 0 and not zero:
        part, s_rem = money_for(left, r, i_start[i], t, pos, s_rem, s_charged, rt, tiers,
                                wins)
        s_charged += part
        cost += part
        cu[i_cu[i]] += left
    if smax > 0:
        cost = min(cost, max(smax - scost, 0))  # a session never costs more than its max
    if left > 0 or cost > 0:
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
    scost += cost
    out[O_S_USED, i] = new_used
    out[O_S_BILLED, i] = new_billed
    out[O_S_REM, i] = s_rem
    out[O_S_CHARGED, i] = s_charged
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
        hold = 0
        src = MONEY
        member_bound = unit_room <= 0
        cap_bound = False
        session_bound = False
        next_fee = fee if new_billed == 0 else 0
        if target > 0:
            # The first bucket that applies and has units: the charge above drained every
            # one before the last it took from, so the search starts there. It grants the
            # usage whose next billed units it covers.
            b = NONE
            if last != NONE and remaining[last] > 0:
                b = last
            else:
                for k in range(a_first[a] if last == NONE else last + 1, a_end[a]):
                    if remaining[k] > 0 and bucket_applies(k, rg, unit, now, buckets,
                                                           bucket_rgs):
                        b = k
                        break
            if b != NONE and (next_fee == 0 or next_fee <= money_room(
                    a, m, money, a_floor, a_cap, spent, mres, m_cap_money, mspent,
                    mmres)[0]):
                # The connect fee is charged with the first report, not held. Usually the
                # bucket covers the whole target (one division, not three).
                g = target
                hold = billed_units(new_used + g, r, rt, steps) - new_billed
                if hold > remaining[b]:
                    g = min(target, usage_within(new_billed + remaining[b], r, rt, steps)
                            - new_used)
                    hold = billed_units(new_used + g, r, rt, steps) - new_billed
                if g > 0:
                    src = b
        if src != MONEY:
            remaining[src] -= hold
            b_reserved[src] += hold
            res_amount[i] = hold
        elif target > 0:
            room, cap_bound, member_bound = money_room(a, m, money, a_floor, a_cap, spent,
                                                       mres, m_cap_money, mspent, mmres)
            if smax > 0 and not free_at_max and smax - scost < room:
                room = smax - scost
                session_bound = True
                member_bound = cap_bound = False
            g = target
            cost = grant_cost(g, r, t, pos, new_used, new_billed, s_rem, s_charged,
                              next_fee, smax, scost, free_at_max, rt, tiers, wins, steps)
            if cost > room and cost > 0:
                # The most units the room pays for (money only rises with units).
                lo = 0
                hi = g
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if grant_cost(mid, r, t, pos, new_used, new_billed, s_rem, s_charged,
                                  next_fee, smax, scost, free_at_max, rt, tiers, wins,
                                  steps) <= room:
                        lo = mid
                    else:
                        hi = mid - 1
                g = lo
                cost = grant_cost(g, r, t, pos, new_used, new_billed, s_rem, s_charged,
                                  next_fee, smax, scost, free_at_max, rt, tiers, wins, steps)
                if g <= 0 or cost > room:
                    g = 0
            if g > 0:
                hold = cost
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
            elif exh_flag[a] == 0 and not cap_bound and not session_bound:
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
            # Final units: nothing more could be granted after these. What the least
            # grant costs is priced only when it decides (most grants have a bucket).
            more = zero != 0
            last_grant = False  # the session's maximum leaves less than the least grant
            if not more and smax > 0 and not free_at_max:
                least = least_grant(r, t, pos, rt, tiers, wins, steps)
                last_grant = smax - scost - (hold if src == MONEY else 0) < max(least, 1)
            if (not more and not last_grant
                    and (unit_room == NO_BOUNDARY or unit_room - g > 0)):
                # The bucket just granted from applies: if it has units left, that is it.
                more = src != MONEY and remaining[src] > 0
                if not more:
                    for b in range(a_first[a], a_end[a]):
                        if remaining[b] > 0 and bucket_applies(b, rg, unit, now, buckets,
                                                               bucket_rgs):
                            more = True
                            break
                if not more:
                    room, _, _ = money_room(a, m, money, a_floor, a_cap, spent, mres,
                                            m_cap_money, mspent, mmres)
                    more = least_grant(r, t, pos, rt, tiers, wins, steps) <= room
            if not more:
                final[i] = 1
                n_ev = emit(ev, n_ev, i, EV_FINAL, NONE, 0, g, 0)

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
    return n_chg, n_ev


@njit(cache=True, nogil=True)
def charge_kernel(
    items: np.ndarray,         # a row per item, I_* columns
    rates: tuple,              # see engine.rating.plans.RateTable.arrays
    accounts: np.ndarray,      # A_* rows, a column per account
    buckets: np.ndarray,       # B_* rows, a column per bucket (grouped by account, in order)
    bucket_rgs: np.ndarray,    # the buckets' rating groups, bucket b's in [B_RG_LO, B_RG_HI)
    members: np.ndarray,       # M_* rows, a column per member
    member_units: np.ndarray,  # U_* rows, a column per (member, unit type - 1): 3 per member
    cycle_units: np.ndarray,   # units billed this cycle per (account, rating group) slot
) -> tuple:
    """Runs every item in batch order; items of one account see each other's effects.

    Per item: give back its current reservation; bill the used units on the session's
    cumulative usage of the rating group (the first increment, the steps and the rounding
    apply once per session: a report bills what the usage so far bills beyond what was
    billed before) and pay those billed units from buckets in order, then money (priced over
    the time the usage took, with the connect fee on the session's first billed units and
    the session's money rounded as a whole; usage is never refused, control is at grant
    time); then grant from the first bucket that covers the next billed units, else from
    money (what buckets would cover is not priced), within balance + credit limit, the
    cycle's spending cap, the member's caps and the session's maximum cost. A direct debit
    (EVENT) is all or nothing. Thresholds crossed become events. Returns new arrays only: the
    item outcomes (O_* rows: result, granted, reservation source, reserved, charged,
    validity, final, and the session's rating-group state after it), the accounts'
    first 6 rows, the buckets' (remaining, reserved change, level), the members' money
    (spent, reserved) and units (used, reserved), cycle units, charges (item, source, billed
    units, money) and events (item, kind, ref, level, value, limit), a column each. Several
    rows in one array: each array crossing into Python costs microseconds.
    """
    rt = rates[0]
    rate_flags, rate_fee, rate_smax = rt[R_FLAGS], rt[R_FEE], rt[R_SESSION_MAX]
    i_acct, i_rate = items[:, I_ACCT], items[:, I_RATE]
    a_first, a_end = accounts[A_BUCKETS_LO], accounts[A_BUCKETS_HI]

    n = items.shape[0]
    out = np.zeros((11, n), dtype=np.int64)
    out[O_RESULT] = SUCCESS
    out[O_RES_SRC] = MONEY
    acct_out = accounts[:6].copy()
    bucket_out = np.zeros((3, buckets.shape[1]), dtype=np.int64)
    bucket_out[0] = buckets[B_REMAINING]
    bucket_out[2] = buckets[B_LEVEL]
    member_out = members[M_SPENT:].copy()
    units_out = member_units[U_USED:].copy()
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
        # One body inlined twice: with literal zeros for a rate without a connect fee or a
        # session maximum (most), so that this copy is compiled without their code. With one
        # copy taking them as values, 1024 items took 1.07-1.1x d80efa1's time (before
        # cumulative pricing); split, 0.99-1.05x (bench/results/kernel-2core/).
        r = i_rate[i]
        if r == NONE or (rate_fee[r] == 0 and rate_smax[r] == 0):
            n_chg, n_ev = charge_item(i, 0, 0, items, rates, accounts, buckets, bucket_rgs,
                                      members, member_units, out, acct_out, bucket_out,
                                      member_out, units_out, cu, chg, n_chg, ev, n_ev)
        else:
            fee = 0 if rate_flags[r] & RATE_ZERO_RATED else rate_fee[r]
            n_chg, n_ev = charge_item(i, fee, rate_smax[r], items, rates, accounts, buckets,
                                      bucket_rgs, members, member_units, out, acct_out,
                                      bucket_out, member_out, units_out, cu, chg, n_chg, ev,
                                      n_ev)

    return (out, acct_out, bucket_out, member_out, units_out, cu, chg[:, :n_chg], ev[:, :n_ev])
