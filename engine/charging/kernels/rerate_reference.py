"""Plain-Python twin of kernels.rerate.rerate_kernel, written for clarity; used by the property
tests only."""

from __future__ import annotations

from dataclasses import dataclass

from tollgate.engine.charging.kernels.reference import RefRate, price

OVERFLOW, UNRATED, SKIPPED = -1, -2, -3
INT64_MAX = 2**63 - 1


@dataclass
class RerateItem:
    units: int
    rate: int  # index into the rates, -1 = none
    start: int  # local ms
    end: int
    slot: int
    priced: bool = True


def rerate_reference(items: list[RerateItem], rates: list[RefRate],
                     slot_start: list[int]) -> tuple[list[int], list[int]]:
    """Same contract as the kernel, on lists."""
    pos = list(slot_start)
    out = []
    for it in items:
        rate = rates[it.rate] if it.rate >= 0 else None
        if rate is None or rate.not_allowed:
            out.append(UNRATED if it.priced else SKIPPED)
            continue
        if it.priced:
            p = price(it.units, rate, it.start, it.end, pos[it.slot])
            out.append(OVERFLOW if p is None or p > INT64_MAX else p)
        else:
            out.append(SKIPPED)
        if not rate.zero_rated:
            pos[it.slot] += it.units
    return out, pos
