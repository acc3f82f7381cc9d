"""The charging kernel: price, commit, release and grant a batch of items in batch order."""

from __future__ import annotations

import numpy as np
from numba import njit

INT64_MAX = np.iinfo(np.int64).max
MONEY_LIMIT = 2**62
"""No single charge may exceed this, nor take a balance below -MONEY_LIMIT (no int64 wrap)."""

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
WEEK_MS = 7 * DAY_MS
NO_BOUNDARY = INT64_MAX // 4

helper = njit(cache=True, nogil=True, _nrt=False)
"""For the kernels' helpers, which allocate nothing: compiled without Numba's runtime, their
array arguments are not reference-counted on every call (those atomic increments and
decrements were over half of the kernel's time)."""


@helper
def billable_increments(units: int, increment: int, first_increment: int) -> int:
    """Increments charged for `units`: at least the first increment, rounded up."""
    if units <= 0:
        return 0
    if units < first_increment:
        units = first_increment
    return (units + increment - 1) // increment


@helper
def window_at(r: int, local_ms: int, win_start: np.ndarray, win_days: np.ndarray,
              win_from: np.ndarray, win_to: np.ndarray) -> int:
    """The time window of rate r at a local time, or NONE. Days: 1970-01-01 was a Thursday."""
    minute = (local_ms // MINUTE_MS) % 1440
    day = (local_ms // DAY_MS + 3) % 7  # Monday = 0
    for w in range(win_start[r], win_start[r + 1]):
        if (win_days[w] >> day) & 1 and win_from[w] <= minute < win_to[w]:
            return w
    return NONE


@helper
def next_change(r: int, local_ms: int, win_start: np.ndarray, win_days: np.ndarray,
                win_from: np.ndarray, win_to: np.ndarray) -> int:
    """The first local time after local_ms at which rate r's window changes (Tariff-Time-
    Change), or NO_BOUNDARY when it has no windows or none changes within a week."""
    if win_start[r] == win_start[r + 1]:
        return NO_BOUNDARY
    current = window_at(r, local_ms, win_start, win_days, win_from, win_to)
    day0 = (local_ms // DAY_MS) * DAY_MS
    t = local_ms
    while t < local_ms + WEEK_MS + DAY_MS:
        best = NO_BOUNDARY
        for d in range(9):
            day_start = day0 + d * DAY_MS
            for w in range(win_start[r], win_start[r + 1]):
                for edge in (win_from[w], win_to[w]):
                    c = day_start + edge * MINUTE_MS
                    if t < c < best:
                        best = c
        if best == NO_BOUNDARY:
            return NO_BOUNDARY
        if window_at(r, best, win_start, win_days, win_from, win_to) != current:
            return best
        t = best
    return NO_BOUNDARY


@helper
def tiered_price(n: int, pos: int, r: int, rate_price: np.ndarray, rate_increment: np.ndarray,
                 tier_start: np.ndarray, tier_from: np.ndarray, tier_price: np.ndarray) -> int:
    """Money for n increments whose first starts at cycle position `pos`; an increment is
    priced by the tier its start falls in. -1 on overflow."""
    inc = rate_increment[r]
    total = 0
    while n > 0:
        price = rate_price[r]
        edge = NO_BOUNDARY
        for k in range(tier_start[r], tier_start[r + 1]):
            if tier_from[k] <= pos:
                price = tier_price[k]
            elif tier_from[k] < edge:
                edge = tier_from[k]
        take = n
        if edge != NO_BOUNDARY:
            take = min(n, (edge - pos + inc - 1) // inc)
        if price != 0 and take > (INT64_MAX - total) // price:
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
def price_span(units: int, r: int, start: int, end: int, pos: int, rate_price: np.ndarray,
               rate_increment: np.ndarray, rate_first: np.ndarray, rate_flags: np.ndarray,
               tier_start: np.ndarray, tier_from: np.ndarray, tier_price: np.ndarray,
               win_start: np.ndarray, win_days: np.ndarray, win_from: np.ndarray,
               win_to: np.ndarray, win_price: np.ndarray) -> int:
    """Money for `units` used over local times [start, end] from cycle position `pos`.
    Billable increments are split over the time windows in proportion to time (a call over
    19:00 is priced in two parts); outside windows the tiers apply. -1 on overflow."""
    n = billable_increments(units, rate_increment[r], rate_first[r])
    if n == 0 or rate_flags[r] & RATE_ZERO_RATED:
        return 0
    if n > INT64_MAX // rate_increment[r]:
        return -1
    if end <= start:
        start = end
    total = 0
    done = 0
    t = start
    while done < n:
        w = window_at(r, t, win_start, win_days, win_from, win_to)
        seg_end = end
        if end > start:
            seg_end = min(next_change(r, t, win_start, win_days, win_from, win_to), end)
            upto = n if seg_end >= end else split(n, (seg_end - start) // 1000,
                                                  max(1, (end - start) // 1000))
        else:
            upto = n
        k = upto - done
        if k > 0:
            if w != NONE:
                if win_price[w] != 0 and k > (INT64_MAX - total) // win_price[w]:
                    return -1
                part = k * win_price[w]
            else:
                part = tiered_price(k, pos + done * rate_increment[r], r, rate_price,
                                    rate_increment, tier_start, tier_from, tier_price)
                if part < 0 or part > INT64_MAX - total:
                    return -1
            total += part
            done = upto
        t = seg_end
    return total


@helper
def grant_price(units: int, r: int, t: int, pos: int, rate_price: np.ndarray,
                rate_increment: np.ndarray, rate_first: np.ndarray, rate_flags: np.ndarray,
                tier_start: np.ndarray, tier_from: np.ndarray, tier_price: np.ndarray,
                win_start: np.ndarray, win_days: np.ndarray, win_from: np.ndarray,
                win_to: np.ndarray, win_price: np.ndarray) -> int:
    """Money to reserve for granting `units` at local time t (a grant never spans a window
    change: its validity ends there)."""
    return price_span(units, r, t, t, pos, rate_price, rate_increment, rate_first, rate_flags,
                      tier_start, tier_from, tier_price, win_start, win_days, win_from, win_to,
                      win_price)


@helper
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
    """Appends an event row; returns the new count."""
    ev[n, 0] = item
    ev[n, 1] = kind
    ev[n, 2] = ref
    ev[n, 3] = level
    ev[n, 4] = value
    ev[n, 5] = limit
    return n + 1


@njit(cache=True, nogil=True)
def charge_kernel(
    items: tuple,      # see engine.batch.ITEM_COLUMNS
    rates: tuple,      # see engine.plans.RateTable.arrays
    accounts: tuple,   # see engine.batch.ACCOUNT_COLUMNS
    buckets: tuple,    # see engine.batch.BUCKET_COLUMNS
    members: tuple,    # see engine.batch.MEMBER_COLUMNS
    cycle_units: np.ndarray,  # units billed this cycle per (account, rating group) slot
) -> tuple:
    """Runs every item in batch order; items of one account see each other's effects.

    Per item: give back its current reservation; charge the used units (buckets in order,
    then money, priced over the time the usage took; usage is never refused, control is at
    grant time); then grant from the first bucket with units left, else from money, within
    balance + credit limit, the cycle's spending cap and the member's caps. A direct debit
    (EVENT) is all or nothing. Thresholds crossed become events. Returns new arrays only.
    """
    (i_acct, i_member, i_rg, i_rate, i_start, i_time, i_used, i_want, i_requested, i_flags,
     i_res_src, i_res_units, i_res_amount, i_cu, i_offset) = items
    (rate_price, rate_increment, rate_first, rate_quota, rate_unit, rate_validity, rate_flags,
     tier_start, tier_from, tier_price, win_start, win_days, win_from, win_to,
     win_price) = rates
    (a_money, a_floor, a_mres, a_cap, a_spent, a_bucket_start, a_low_mark, a_cap_level,
     a_low_flag, a_exh_flag) = accounts
    (b_remaining, b_unit, b_expiry, b_rg_start, b_rgs, b_initial, b_level) = buckets
    (m_cap_money, m_spent, m_mres, m_cap_units, m_used_units, m_res_units) = members

    n = i_acct.shape[0]
    result = np.full(n, SUCCESS, dtype=np.int64)
    granted = np.zeros(n, dtype=np.int64)
    res_src = np.full(n, MONEY, dtype=np.int64)
    res_amount = np.zeros(n, dtype=np.int64)
    charged = np.zeros(n, dtype=np.int64)
    validity = np.zeros(n, dtype=np.int64)
    final = np.zeros(n, dtype=np.int64)
    money = a_money.copy()
    mres = a_mres.copy()
    spent = a_spent.copy()
    cap_level = a_cap_level.copy()
    low_flag = a_low_flag.copy()
    exh_flag = a_exh_flag.copy()
    remaining = b_remaining.copy()
    b_reserved = np.zeros(b_remaining.shape[0], dtype=np.int64)
    level = b_level.copy()
    mspent = m_spent.copy()
    mmres = m_mres.copy()
    mused = m_used_units.copy()
    mres_u = m_res_units.copy()
    cu = cycle_units.copy()

    cap = 0
    for i in range(n):
        a = i_acct[i]
        cap += a_bucket_start[a + 1] - a_bucket_start[a] + 1
    chg_item = np.empty(cap, dtype=np.int64)
    chg_src = np.empty(cap, dtype=np.int64)
    chg_units = np.empty(cap, dtype=np.int64)
    chg_money = np.empty(cap, dtype=np.int64)
    n_chg = 0
    ev = np.empty((4 * n + 4 * cap, 6), dtype=np.int64)  # (item, kind, ref, level, value, limit)
    n_ev = 0

    for i in range(n):
        a = i_acct[i]
        m = i_member[i]
        r = i_rate[i]
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
        cost_used = price_span(used, r, i_start[i], t, pos, rate_price, rate_increment,
                               rate_first, rate_flags, tier_start, tier_from, tier_price,
                               win_start, win_days, win_from, win_to, win_price)
        cost_target = 0
        if want != WANT_NONE:
            cost_target = grant_price(target, r, t, pos, rate_price, rate_increment, rate_first,
                                      rate_flags, tier_start, tier_from, tier_price, win_start,
                                      win_days, win_from, win_to, win_price)
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
            for b in range(a_bucket_start[a], a_bucket_start[a + 1]):
                if covered < used and bucket_applies(b, i_rg[i], unit, utc, b_rg_start, b_rgs,
                                                     b_unit, b_expiry):
                    covered += min(remaining[b], used - covered)
            cost = 0
            if covered < used:
                cost = price_span(used - covered, r, i_start[i], t, pos, rate_price,
                                  rate_increment, rate_first, rate_flags, tier_start, tier_from,
                                  tier_price, win_start, win_days, win_from, win_to, win_price)
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
        for b in range(a_bucket_start[a], a_bucket_start[a + 1]):
            if left == 0:
                break
            if remaining[b] > 0 and bucket_applies(b, i_rg[i], unit, utc, b_rg_start, b_rgs,
                                                   b_unit, b_expiry):
                take = min(left, remaining[b])
                remaining[b] -= take
                left -= take
                chg_item[n_chg] = i
                chg_src[n_chg] = b
                chg_units[n_chg] = take
                chg_money[n_chg] = 0
                n_chg += 1
        if left > 0:
            cost = price_span(left, r, i_start[i], t, pos, rate_price, rate_increment,
                              rate_first, rate_flags, tier_start, tier_from, tier_price,
                              win_start, win_days, win_from, win_to, win_price)
            money[a] -= cost
            spent[a] += cost
            charged[i] = cost
            chg_item[n_chg] = i
            chg_src[n_chg] = MONEY
            chg_units[n_chg] = left
            chg_money[n_chg] = cost
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
                for b in range(a_bucket_start[a], a_bucket_start[a + 1]):
                    if remaining[b] > 0 and bucket_applies(b, i_rg[i], unit, utc, b_rg_start,
                                                           b_rgs, b_unit, b_expiry):
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
                cost = grant_price(g, r, t, pos, rate_price, rate_increment, rate_first,
                                   rate_flags, tier_start, tier_from, tier_price, win_start,
                                   win_days, win_from, win_to, win_price)
                if cost > room and cost > 0:
                    # The most whole increments the room pays for (price rises with units):
                    # a division for a flat price, a binary search over tiers.
                    lo = 0
                    hi = (g + rate_increment[r] - 1) // rate_increment[r]
                    w = window_at(r, t, win_start, win_days, win_from, win_to)
                    if w != NONE or tier_start[r] == tier_start[r + 1]:
                        flat = win_price[w] if w != NONE else rate_price[r]
                        lo = min(hi, max(room, 0) // flat)
                        hi = lo
                    while lo < hi:
                        mid = (lo + hi + 1) // 2
                        c = grant_price(mid * rate_increment[r], r, t, pos, rate_price,
                                        rate_increment, rate_first, rate_flags, tier_start,
                                        tier_from, tier_price, win_start, win_days, win_from,
                                        win_to, win_price)
                        if c <= room:
                            lo = mid
                        else:
                            hi = mid - 1
                    g = min(lo * rate_increment[r], g)
                    cost = grant_price(g, r, t, pos, rate_price, rate_increment, rate_first,
                                       rate_flags, tier_start, tier_from, tier_price,
                                       win_start, win_days, win_from, win_to, win_price)
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
                change = next_change(r, t, win_start, win_days, win_from, win_to)
                v = rate_validity[r]
                if change != NO_BOUNDARY:
                    to_change = max(1, (change - t) // 1000)
                    if v == 0 or to_change < v:
                        v = to_change
                validity[i] = v
                # Final units: nothing more could be granted after these.
                more = zero != 0
                if not more and (unit_room == NO_BOUNDARY or unit_room - g > 0):
                    for b in range(a_bucket_start[a], a_bucket_start[a + 1]):
                        if remaining[b] > 0 and bucket_applies(b, i_rg[i], unit, utc, b_rg_start,
                                                               b_rgs, b_unit, b_expiry):
                            more = True
                            break
                    if not more:
                        room, _, _ = money_room(a, m, money, a_floor, a_cap, spent, mres,
                                                m_cap_money, mspent, mmres)
                        least = grant_price(max(rate_first[r], rate_increment[r]), r, t, pos,
                                            rate_price, rate_increment, rate_first, rate_flags,
                                            tier_start, tier_from, tier_price, win_start,
                                            win_days, win_from, win_to, win_price)
                        more = least <= room
                if not more:
                    final[i] = 1
                    n_ev = emit(ev, n_ev, i, EV_FINAL, NONE, 0, g,
                                0)

        # Thresholds this item took the account across, each announced once per cycle.
        for b in range(a_bucket_start[a], a_bucket_start[a + 1]):
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

    return ((result, granted, res_src, res_amount, charged, validity, final),
            (money, mres, spent, cap_level, low_flag, exh_flag),
            (remaining, b_reserved, level),
            (mspent, mmres, mused, mres_u),
            cu,
            (chg_item[:n_chg], chg_src[:n_chg], chg_units[:n_chg], chg_money[:n_chg]),
            (ev[:n_ev, 0], ev[:n_ev, 1], ev[:n_ev, 2], ev[:n_ev, 3], ev[:n_ev, 4],
             ev[:n_ev, 5]))
