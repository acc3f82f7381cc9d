"""Plain-Python twins of the kernels, written for clarity; used only by property tests."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from fractions import Fraction

SUCCESS = 2001
END_USER_SERVICE_DENIED = 4010
CREDIT_LIMIT_REACHED = 4012
INVALID_AVP_VALUE = 5004
RATING_FAILED = 5031
MONEY = -1
INT64_MAX = 2**63 - 1
MONEY_LIMIT = 2**62
MINUTE, DAY = 60_000, 86_400_000
HORIZON_DAYS = 9  # next_change looks at the days from t's on
EV_BUCKET, EV_CAP, EV_LOW, EV_EXHAUSTED, EV_FINAL, EV_MEMBER_CAP = 1, 2, 3, 4, 5, 6
ROUND_UP, ROUND_HALF_EVEN, ROUND_DOWN = 0, 1, 2


@dataclass
class RefWindow:
    days: int  # bit 0 = Monday
    start: int  # minute of day
    end: int
    price: int
    date: int = -1  # a dated window's local day number (days since 1970-01-01); -1 weekly


@dataclass
class RefRate:
    price: int
    increment: int
    first: int
    quota: int
    unit: int
    validity: int = 0
    zero_rated: bool = False
    not_allowed: bool = False
    tiers: list[tuple[int, int]] = field(default_factory=list)  # (from_units, price)
    windows: list[RefWindow] = field(default_factory=list)
    per: int = 0  # the price is per this many units (0: per increment)
    rounding: int = ROUND_UP
    fee: int = 0  # connect fee per session and rating group
    steps: list[tuple[int, int]] = field(default_factory=list)  # (from_units, increment)
    session_max: int = 0  # the most one session may cost (0: no limit)
    session_free: bool = False  # at session_max the session goes on free (else: final units)

    @property
    def price_units(self) -> int:
        return self.per or self.increment


@dataclass
class RefAccount:
    money: int
    floor: int
    reserved: int = 0
    cap: int = 0
    spent: int = 0
    low_mark: int = 0
    cap_level: int = 0
    low_flag: int = 0
    exhausted_flag: int = 0


@dataclass
class RefBucket:
    account: int
    remaining: int
    unit: int
    expiry: int
    rating_groups: list[int]
    initial: int = 0
    level: int = 0
    reserved: int = 0


@dataclass
class RefMember:
    cap_money: int = 0
    spent: int = 0
    reserved: int = 0
    cap_units: list[int] = field(default_factory=lambda: [0, 0, 0])
    used_units: list[int] = field(default_factory=lambda: [0, 0, 0])
    reserved_units: list[int] = field(default_factory=lambda: [0, 0, 0])


@dataclass
class RefItem:
    account: int
    rating_group: int
    rate: int
    time: int
    used: int
    want: int  # 0 commit only, 1 grant, 2 direct debit
    requested: int
    res_src: int
    res_amount: int
    member: int = -1
    start: int = -1  # -1: same as time
    grace: bool = False
    res_units: int = 0
    cycle_slot: int = 0
    now: int = 0  # the server's clock (UTC): bucket expiry is judged by it alone
    res_member: bool = False  # the current reservation counts against the member's caps
    # The session's rating group so far: units reported, units billed, the rounding's
    # remainder and the money charged; and the whole session's cost before the request.
    s_used: int = 0
    s_billed: int = 0
    s_rem: int = 0
    s_charged: int = 0
    s_cost: int = 0
    req: int = -1  # the request it belongs to (consecutive items; -1: its own)


@dataclass
class RefOut:
    result: int = SUCCESS
    granted: int = 0
    res_src: int = MONEY
    res_amount: int = 0
    charged: int = 0
    validity: int = 0
    final: bool = False
    charges: list[tuple[int, int, int]] = field(default_factory=list)  # (source, units, micros)
    s_used: int = 0
    s_billed: int = 0
    s_rem: int = 0
    s_charged: int = 0


def window_at(rate: RefRate, t: int) -> int:
    """The first window holding local time t: among the day's dated windows if it has any,
    else among the weekly ones; -1 for none."""
    minute = (t // MINUTE) % 1440
    day = t // DAY
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    dated = [k for k, w in enumerate(rate.windows) if w.date == day]
    weekly = [k for k, w in enumerate(rate.windows) if w.date < 0 and w.days >> weekday & 1]
    for k in dated or weekly:
        if rate.windows[k].start <= minute < rate.windows[k].end:
            return k
    return -1


def next_change(rate: RefRate, t: int) -> int | None:
    """First instant after t where the window of `rate` differs, up to the end of the
    HORIZON_DAYS days from t's. The window can only change at a local midnight (where a
    dated day starts and ends) or at a window's edge on a day it is for."""
    if not rate.windows:
        return None
    now = window_at(rate, t)
    first = t // DAY
    edges = sorted(set().union(*(_edges(rate, day)
                                 for day in range(first, first + HORIZON_DAYS))))
    return next((e for e in edges if e > t and window_at(rate, e) != now), None)


def _edges(rate: RefRate, day: int) -> set[int]:
    """The local times on `day` (its midnights included) where the window may change."""
    minutes = {0, 1440} | {m for w in rate.windows if w.date < 0 or w.date == day
                           for m in (w.start, w.end)}
    return {day * DAY + m * MINUTE for m in minutes}


def billed(used: int, rate: RefRate) -> int:
    """Units billed for a session's cumulative usage: at least the first increment, then up
    to the next point of the step grid."""
    if used <= 0:
        return 0
    used = max(used, rate.first)
    grid_from, inc = 0, rate.increment
    for start, step in rate.steps:
        if used > start:
            grid_from, inc = start, step
    return grid_from + -(-(used - grid_from) // inc) * inc


def usage_within(units: int, rate: RefRate) -> int:
    """The most cumulative usage that bills at most `units`."""
    if units < billed(1, rate):
        return 0
    grid_from, inc = 0, rate.increment
    for start, step in rate.steps:
        if units >= start:
            grid_from, inc = start, step
    return grid_from + (units - grid_from) // inc * inc


def tiered(units: int, pos: int, rate: RefRate) -> int:
    """Price x units for `units` from cycle position pos; each unit at its tier's price."""
    edges = [0, *(t[0] for t in rate.tiers), INT64_MAX]
    prices = [rate.price, *(t[1] for t in rate.tiers)]
    total = 0
    for lo, hi, p in zip(edges, edges[1:], prices, strict=False):
        total += max(0, min(hi, pos + units) - max(lo, pos)) * p
    return total


def value(units: int, rate: RefRate, start: int, end: int, pos: int) -> int | None:
    """Price x units of billed units used over [start, end]: split over the time windows in
    proportion to the whole seconds each part took. None beyond int64."""
    if units <= 0 or rate.zero_rated:
        return 0
    if end <= start:
        start = end
    cuts = [start]
    while end > start:
        nxt = next_change(rate, cuts[-1])
        if nxt is None or nxt >= end:
            break
        cuts.append(nxt)
    cuts.append(end)
    total, done = 0, 0
    whole = max(1, (end - start) // 1000)
    for k in range(len(cuts) - 1):
        upto = units if k == len(cuts) - 2 else units * ((cuts[k + 1] - start) // 1000) // whole
        w = window_at(rate, cuts[k])
        total += ((upto - done) * rate.windows[w].price if w >= 0
                  else tiered(upto - done, pos + done, rate))
        done = upto
    return None if total > INT64_MAX else total


def money(units: int, rate: RefRate, start: int, end: int, pos: int, rem: int = 0,
          charged: int = 0) -> tuple[int, int] | None:
    """(money, remainder) for billed units of a session that has been charged `charged` and
    has `rem` of price x units not yet charged: the session's cumulative value rounded by the
    rate's method, less what it was charged before. None beyond int64."""
    v = value(units, rate, start, end, pos)
    if v is None or v > INT64_MAX - MONEY_LIMIT:
        return None
    per = rate.price_units
    whole = Fraction(charged * per + rem + v, per)
    total = (math.ceil(whole) if rate.rounding == ROUND_UP
             else math.floor(whole) if rate.rounding == ROUND_DOWN else round(whole))
    q = max(0, total - charged)
    return q, rem + v - q * per


def price(units: int, rate: RefRate, start: int, end: int, pos: int) -> int | None:
    """Money for billed units on their own (no session before them)."""
    m = money(units, rate, start, end, pos)
    return None if m is None else m[0]


def level(used: int, size: int) -> int:
    if size <= 0:
        return 0
    return 100 if used >= size else 80 if used * 5 >= size * 4 else 50 if used * 2 >= size else 0


@dataclass
class RefState:
    accounts: list[RefAccount]
    buckets: list[RefBucket]
    members: list[RefMember]
    cycle_units: list[int]
    events: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)


def charge_reference(items: list[RefItem], rates: list[RefRate], state: RefState
                     ) -> tuple[list[RefOut], RefState]:
    """Same contract as kernels.charge.charge_kernel, on lists; works on a copy."""
    st = RefState([RefAccount(**vars(a)) for a in state.accounts],
                  [RefBucket(**{**vars(b), "rating_groups": list(b.rating_groups)})
                   for b in state.buckets],
                  [RefMember(m.cap_money, m.spent, m.reserved, list(m.cap_units),
                             list(m.used_units), list(m.reserved_units)) for m in state.members],
                  list(state.cycle_units))
    outs: list[RefOut] = []
    for n, it in enumerate(items):
        # What the session cost before this item: before its request, and its request's
        # items before it.
        first = n
        while it.req >= 0 and first > 0 and items[first - 1].req == it.req:
            first -= 1
        out = RefOut()
        outs.append(out)
        _item(n, it, rates, st, out, it.s_cost + sum(o.charged for o in outs[first:n]))
    return outs, st


def _room(acct: RefAccount, mem: RefMember | None) -> tuple[int, bool, bool]:
    """Money a grant may take, and whether the cap or the member's cap set it."""
    room = acct.money - acct.floor
    cap_room = acct.cap - acct.spent - acct.reserved if acct.cap > 0 else None
    cap_bound = cap_room is not None and cap_room < room
    if cap_room is not None:
        room = min(room, cap_room)
    member_bound = False
    if mem is not None and mem.cap_money > 0:
        m_room = mem.cap_money - mem.spent - mem.reserved
        member_bound = m_room < room
        room = min(room, m_room)
    return room, member_bound, cap_bound


def _item(n: int, it: RefItem, rates: list[RefRate], st: RefState, out: RefOut,
          session_cost: int) -> None:
    acct = st.accounts[it.account]
    mem = st.members[it.member] if it.member >= 0 else None
    counted = mem if it.res_member else None
    if it.res_amount or it.res_units:
        back = acct.money if it.res_src == MONEY else st.buckets[it.res_src].remaining
        if it.res_amount < 0 or back + it.res_amount > INT64_MAX:
            # Giving it back would wrap int64: refused, the reservation stays held.
            out.result = INVALID_AVP_VALUE
            out.granted, out.res_src, out.res_amount = it.res_units, it.res_src, it.res_amount
            return
        if it.res_src == MONEY:
            acct.money += it.res_amount
            acct.reserved -= it.res_amount
            if counted:
                counted.reserved -= it.res_amount
        else:
            st.buckets[it.res_src].remaining += it.res_amount
            st.buckets[it.res_src].reserved -= it.res_amount
        if counted and it.rate >= 0:
            counted.reserved_units[rates[it.rate].unit - 1] -= it.res_units
    if it.rate < 0:
        out.result = RATING_FAILED
        return
    rate = rates[it.rate]
    if rate.not_allowed:
        out.result = END_USER_SERVICE_DENIED
        return
    u = rate.unit - 1
    start = it.time if it.start < 0 else it.start
    mine = [k for k, b in enumerate(st.buckets)
            if b.account == it.account and b.unit == rate.unit
            and (b.expiry == 0 or b.expiry > it.now)
            and it.rating_group in b.rating_groups]
    want = it.want
    target = it.used if want == 2 else (
        it.requested if 0 < it.requested < rate.quota else rate.quota)
    pos = st.cycle_units[it.cycle_slot]
    if it.used > MONEY_LIMIT - it.s_used or target > MONEY_LIMIT - it.s_used - it.used:
        out.result = INVALID_AVP_VALUE
        return
    used_total = it.s_used + it.used
    billed_total = max(it.s_billed, billed(used_total, rate))
    to_bill = billed_total - it.s_billed  # the session's minimum and rounding met once
    fee = 0 if rate.zero_rated else rate.fee
    first_fee = fee if it.s_billed == 0 and to_bill > 0 else 0
    cost_used = money(to_bill, rate, start, it.time, pos, it.s_rem, it.s_charged)
    cost_target = money(billed(used_total + target, rate) - billed_total, rate, it.time,
                        it.time, pos) if want else (0, 0)
    if (cost_used is None or cost_target is None or cost_used[0] > MONEY_LIMIT - fee
            or cost_target[0] > MONEY_LIMIT - fee
            or acct.money - cost_used[0] - first_fee < -MONEY_LIMIT):
        out.result = INVALID_AVP_VALUE
        return
    if want and it.grace and not rate.zero_rated:
        out.result = END_USER_SERVICE_DENIED
        if want == 2 or it.used == 0:
            return
        want = 0
    smax = rate.session_max
    if want == 2:
        covered = min(to_bill, sum(st.buckets[k].remaining for k in mine))
        cost = first_fee
        if covered < to_bill and not rate.zero_rated:
            paid = money(to_bill - covered, rate, start, it.time, pos, it.s_rem, it.s_charged)
            assert paid is not None
            cost += paid[0]
        if smax > 0:
            cost = min(cost, max(smax - session_cost, 0))
        room, _, _ = _room(acct, mem)
        over_units = (mem is not None and mem.cap_units[u] > 0 and it.used >
                      mem.cap_units[u] - mem.used_units[u] - mem.reserved_units[u])
        if (cost > 0 and cost > room) or over_units:
            out.result = CREDIT_LIMIT_REACHED
            return
        out.granted = it.used

    left = to_bill
    for k in mine:
        take = min(left, st.buckets[k].remaining)
        if take > 0:
            st.buckets[k].remaining -= take
            left -= take
            out.charges.append((k, take, 0))
    cost = first_fee
    rem, charged = it.s_rem, it.s_charged
    if left and not rate.zero_rated:
        paid = money(left, rate, start, it.time, pos, rem, charged)
        assert paid is not None
        cost += paid[0]
        charged += paid[0]
        rem = paid[1]
        st.cycle_units[it.cycle_slot] += left
    if smax > 0:
        cost = min(cost, max(smax - session_cost, 0))
    if left or cost:
        acct.money -= cost
        acct.spent += cost
        out.charged = cost
        out.charges.append((MONEY, left, cost))
        if mem:
            mem.spent += cost
    out.s_used, out.s_billed, out.s_rem, out.s_charged = used_total, billed_total, rem, charged
    if mem:
        mem.used_units[u] += it.used

    if want == 1:
        _grant(n, it, rate, st, out, acct, mem, target, mine, session_cost + cost)
    _thresholds(n, it, st, acct)


def _grant(n: int, it: RefItem, rate: RefRate, st: RefState, out: RefOut, acct: RefAccount,
           mem: RefMember | None, target: int, mine: list[int], session_cost: int) -> None:
    u = rate.unit - 1
    pos = st.cycle_units[it.cycle_slot]
    used, billed_so_far = out.s_used, out.s_billed
    next_fee = 0 if rate.zero_rated or billed_so_far else rate.fee
    smax, free = rate.session_max, rate.session_free

    def cost_of(g: int) -> int:
        need = billed(used + g, rate) - billed_so_far
        if need <= 0:
            return 0
        paid = money(need, rate, it.time, it.time, pos, out.s_rem, out.s_charged)
        assert paid is not None
        cost = next_fee + paid[0]
        return min(cost, max(smax - session_cost, 0)) if smax > 0 and free else cost

    unit_room = None
    if mem is not None and mem.cap_units[u] > 0:
        unit_room = mem.cap_units[u] - mem.used_units[u] - mem.reserved_units[u]
        target = min(target, max(unit_room, 0))
    member_bound = unit_room is not None and unit_room <= 0
    cap_bound = session_bound = False
    with_units = [k for k in mine if st.buckets[k].remaining > 0] if target > 0 else []
    g, hold, src = 0, 0, MONEY
    if with_units and (next_fee == 0 or next_fee <= _room(acct, mem)[0]):
        k = with_units[0]
        g = max(0, min(target, usage_within(billed_so_far + st.buckets[k].remaining, rate) - used))
        if g > 0:
            src, hold = k, billed(used + g, rate) - billed_so_far
            st.buckets[k].remaining -= hold
            st.buckets[k].reserved += hold
            out.res_src, out.res_amount = k, hold
    if src == MONEY and target > 0:
        room, member_bound, cap_bound = _room(acct, mem)
        if smax > 0 and not free and smax - session_cost < room:
            room, session_bound, member_bound, cap_bound = smax - session_cost, True, False, False
        g = target
        cost = cost_of(g)
        if cost > room and cost > 0:
            # Money rises with units: the affordable grants are a prefix.
            g = bisect.bisect_left(range(target + 1), True, key=lambda j: cost_of(j) > room) - 1
            cost = cost_of(g)
            if g <= 0 or cost > room:
                g = 0
        if g > 0:
            hold = cost
            acct.money -= cost
            acct.reserved += cost
            out.res_amount = cost
            if mem:
                mem.reserved += cost
            acct.exhausted_flag = 0
    if g <= 0:
        out.result = CREDIT_LIMIT_REACHED
        if member_bound:
            assert mem is not None
            if unit_room is not None and unit_room <= 0:
                st.events.append((n, EV_MEMBER_CAP, it.member, 100, rate.unit,
                                  mem.cap_units[u]))
            else:
                st.events.append((n, EV_MEMBER_CAP, it.member, 100, 0, mem.cap_money))
        elif acct.exhausted_flag == 0 and not cap_bound and not session_bound:
            acct.exhausted_flag = 1
            st.events.append((n, EV_EXHAUSTED, -1, 0, acct.money, acct.floor))
        return
    out.granted = g
    if mem:
        mem.reserved_units[u] += g
    change = next_change(rate, it.time)
    out.validity = rate.validity
    if change is not None:
        to_change = max(1, (change - it.time) // 1000)
        if out.validity == 0 or to_change < out.validity:
            out.validity = to_change
    more = rate.zero_rated
    least: int | None = 0
    if not more:
        p = price(billed(1, rate), rate, it.time, it.time, pos)
        least = -1 if p is None else p
        if (smax > 0 and not free
                and smax - session_cost - (hold if src == MONEY else 0) < max(least, 1)):
            least = None  # the session's maximum: this grant is its last
    if not more and least is not None and (unit_room is None or unit_room - g > 0):
        more = any(st.buckets[k].remaining > 0 for k in mine)
        if not more:
            more = least <= _room(acct, mem)[0]
    if not more:
        out.final = True
        st.events.append((n, EV_FINAL, -1, 0, g, 0))


def _thresholds(n: int, it: RefItem, st: RefState, acct: RefAccount) -> None:
    for k, b in enumerate(st.buckets):
        if b.account != it.account:
            continue
        lv = level(b.initial - b.remaining, b.initial)
        st.events += [(n, EV_BUCKET, k, step, b.initial - b.remaining, b.initial)
                      for step in (50, 80, 100) if b.level < step <= lv]
        b.level = max(b.level, lv)
    if acct.cap > 0:
        lv = level(acct.spent + acct.reserved, acct.cap)
        st.events += [(n, EV_CAP, -1, step, acct.spent + acct.reserved, acct.cap)
                      for step in (80, 100) if acct.cap_level < step <= lv]
        acct.cap_level = max(acct.cap_level, lv)
    if acct.low_mark > 0:
        if acct.money < acct.low_mark and not acct.low_flag:
            acct.low_flag = 1
            st.events.append((n, EV_LOW, -1, 0, acct.money, acct.low_mark))
        elif acct.money >= acct.low_mark:
            acct.low_flag = 0


@dataclass
class RefRecordItem:
    """A kernel item as the usage records see it: its inputs, then the kernel's outputs."""

    request: int
    shown: bool  # 0: a release its TERMINATION did not mention
    rating_group: int
    rate: int
    used: int
    res_units: int  # units of the reservation it replaced
    s_used: int  # the session's rating group before it ...
    s_billed: int
    out_used: int  # ... and after it (all four 0: unchanged)
    out_billed: int
    out_rem: int
    out_charged: int
    charged: int  # micros


def records_reference(items: list[RefRecordItem], heads: dict[int, tuple[int, ...]],
                      terms: list[tuple[int, int, int, int]], service_ids: list[int],
                      charges: list[tuple[int, int, int, int]], names: dict[int, int]
                      ) -> list[tuple[int, dict[str, int], list[tuple[int, int, int]]]]:
    """Each record, as (its item, its fields by name, its charges (bucket string or -1, units,
    micros)): the record of an item whose session's used units the kernel moved. heads: per
    request (account, subscriber, session, zone, plan, origin, number, start, end, plan
    version, type); terms: per rate (unit, price, increment, connect fee); charges: (item,
    source, units, micros); names: a bucket position's string."""
    out = []
    for n, it in enumerate(items):
        unchanged = not (it.out_used or it.out_billed or it.out_rem or it.out_charged)
        if not it.shown or unchanged or it.out_used == it.s_used:
            continue
        (account, subscriber, session, zone, plan, origin, number, start, end, version,
         kind) = heads[it.request]
        unit, price, increment, fee = terms[it.rate]
        overage = max(0, it.used - it.res_units) if kind != 4 else 0
        first_billed = it.s_billed == 0 and it.out_billed > 0
        fields = dict(
            kind=1, account=account, subscriber=subscriber, session=session, number=number,
            rating_group=it.rating_group, service_id=service_ids[n], zone=zone, unit=unit,
            units=it.used, start=start, end=end, plan=plan, plan_version=version, price=price,
            increment=increment, money=it.charged, overage=int(overage > 0),
            overage_units=overage, origin=origin,
            fee=min(fee, it.charged) if first_billed and fee else 0)
        paid = [(names[s] if s != MONEY else -1, u, m) for i, s, u, m in charges if i == n]
        out.append((n, fields, paid))
    return out
