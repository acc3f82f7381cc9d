"""Plain-Python twins of the kernels, written for clarity; used only by property tests."""

from __future__ import annotations

from dataclasses import dataclass, field

SUCCESS = 2001
CREDIT_LIMIT_REACHED = 4012
INVALID_AVP_VALUE = 5004
RATING_FAILED = 5031
MONEY = -1
INT64_MAX = 2**63 - 1
MONEY_LIMIT = 2**62


@dataclass
class RefRate:
    price: int
    increment: int
    first: int
    quota: int
    unit: int


@dataclass
class RefBucket:
    account: int
    remaining: int
    unit: int
    expiry: int
    rating_groups: list[int]
    reserved: int = 0


@dataclass
class RefItem:
    account: int
    rating_group: int
    rate: int
    time: int
    used: int
    want: int  # 0 none, 1 grant, 2 direct debit
    requested: int
    res_src: int
    res_amount: int


@dataclass
class RefOut:
    result: int = SUCCESS
    granted: int = 0
    res_src: int = MONEY
    res_amount: int = 0
    charged: int = 0
    charges: list[tuple[int, int, int]] = field(default_factory=list)  # (source, units, micros)


def price(units: int, rate: RefRate) -> int | None:
    """Money for `units` (at least the first increment, rounded up); None on overflow."""
    if units <= 0:
        return 0
    billable = max(units, rate.first)
    increments = -(-billable // rate.increment)
    money = increments * rate.price
    return None if money > INT64_MAX else money


def charge_reference(items: list[RefItem], rates: list[RefRate], money: list[int],
                     floors: list[int], buckets: list[RefBucket]
                     ) -> tuple[list[RefOut], list[int], list[int], list[RefBucket]]:
    """Same contract as kernels.charge.charge_kernel, on lists; mutates copies."""
    money = list(money)
    money_reserved = [0] * len(money)
    buckets = [RefBucket(b.account, b.remaining, b.unit, b.expiry, list(b.rating_groups))
               for b in buckets]
    outs = []
    for it in items:
        out = RefOut()
        outs.append(out)
        if it.res_amount:
            if it.res_src == MONEY:
                money[it.account] += it.res_amount
                money_reserved[it.account] -= it.res_amount
            else:
                buckets[it.res_src].remaining += it.res_amount
                buckets[it.res_src].reserved -= it.res_amount
        if it.rate < 0:
            out.result = RATING_FAILED
            continue
        rate = rates[it.rate]

        def usable(b: RefBucket, it: RefItem = it, rate: RefRate = rate) -> bool:
            return (b.account == it.account and b.unit == rate.unit
                    and (b.expiry == 0 or b.expiry > it.time)
                    and it.rating_group in b.rating_groups)

        mine = [k for k, b in enumerate(buckets) if usable(b)]
        if it.want == 2:
            target = it.used
        else:
            target = rate.quota
            if 0 < it.requested < target:
                target = it.requested
        cost_used = price(it.used, rate)
        cost_target = price(target, rate) if it.want else 0
        if (cost_used is None or cost_target is None or cost_used > MONEY_LIMIT
                or cost_target > MONEY_LIMIT or money[it.account] - cost_used < -MONEY_LIMIT):
            out.result = INVALID_AVP_VALUE
            continue
        if it.want == 2:
            in_buckets = sum(buckets[k].remaining for k in mine)
            rest = max(0, it.used - in_buckets)
            cost = price(rest, rate)
            assert cost is not None
            if cost > 0 and cost > money[it.account] - floors[it.account]:
                out.result = CREDIT_LIMIT_REACHED
                continue
            out.granted = it.used

        left = it.used
        for k in mine:
            take = min(left, buckets[k].remaining)
            if take > 0:
                buckets[k].remaining -= take
                left -= take
                out.charges.append((k, take, 0))
        if left:
            cost = price(left, rate)
            assert cost is not None
            money[it.account] -= cost
            out.charged = cost
            out.charges.append((MONEY, left, cost))

        if it.want != 1:
            continue
        with_units = [k for k in mine if buckets[k].remaining > 0]
        if with_units:
            k = with_units[0]
            g = min(target, buckets[k].remaining)
            buckets[k].remaining -= g
            buckets[k].reserved += g
            out.granted, out.res_src, out.res_amount = g, k, g
            continue
        available = money[it.account] - floors[it.account]
        grant = target
        cost = price(grant, rate)
        assert cost is not None
        if rate.price > 0 and cost > available:
            grant = (available // rate.price) * rate.increment if available > 0 else 0
            cost = price(grant, rate)
            assert cost is not None
            if grant <= 0 or cost > available:
                out.result = CREDIT_LIMIT_REACHED
                continue
        money[it.account] -= cost
        money_reserved[it.account] += cost
        out.granted, out.res_amount = grant, cost
    return outs, money, money_reserved, buckets
