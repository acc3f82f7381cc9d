"""kernels.items.item_rows against its plain-Python twin (items_reference), on generated
batches: requests of several messages, every request type, sessions live, ended or events,
TERMINATIONs that leave reservations unmentioned, zones with and without a rate."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.engine.charging.kernels import items, items_reference
from tollgate.engine.charging.kernels.charge import (
    I_ACCT,
    I_RATE,
    I_RG,
    I_START,
    R_GRID_SHIFT,
    R_UNIT,
)
from tollgate.engine.charging.kernels.sessions import (
    H_EXISTS,
    H_RES_HI,
    H_RES_LO,
    H_ST,
    H_T,
    HEAD_COLUMNS,
    RES_COLUMNS,
    RES_RG,
)
from tollgate.engine.charging.wire import (
    U_HAS_REQUESTED,
    U_HAS_USED,
    U_RATING_GROUP,
    U_REQUESTED,
    U_ROWS,
    U_SERVICE_ID,
    U_USED,
)
from tollgate.engine.domain import RequestType, UnitType

GROUPS = st.integers(0, 6) | st.integers(0, 2**32 - 1)
AMOUNT = st.integers(0, 5) | st.integers(0, 2**40)
TIME = st.integers(0, 2**45)


def test_the_kernels_constants_are_the_domains() -> None:
    assert items.EVENT == RequestType.EVENT
    assert (items.OCTETS, items.SECONDS) == (UnitType.OCTETS, UnitType.SECONDS)


@st.composite
def batches(draw: Any) -> tuple[Any, ...]:
    n_units = draw(st.integers(0, 12))
    units = np.zeros((U_ROWS, n_units), np.int64)
    for u in range(n_units):
        units[U_RATING_GROUP, u] = draw(GROUPS)
        units[U_SERVICE_ID, u] = draw(st.integers(0, 9))
        for flag, first in ((U_HAS_USED, U_USED), (U_HAS_REQUESTED, U_REQUESTED)):
            if draw(st.booleans()):
                units[flag, u] = 1
                units[first:first + 5, u] = draw(st.lists(AMOUNT, min_size=5, max_size=5))
    n_rates = draw(st.integers(0, 4))
    rate_table = np.zeros((R_GRID_SHIFT + 1, n_rates), np.int64)
    rate_table[R_UNIT] = draw(st.lists(st.sampled_from([int(u) for u in UnitType]),
                                       min_size=n_rates, max_size=n_rates))
    spans, parts, at = [], [], 0
    for _ in range(draw(st.integers(1, 3))):
        groups = sorted(draw(st.sets(GROUPS, max_size=4 if n_rates else 0)))
        parts += [(g, draw(st.integers(0, n_rates - 1))) for g in groups]
        spans.append((at, at + len(groups)))
        at += len(groups)
    prices = np.array(parts, np.int64).reshape(-1, 2).T.copy()
    n_heads = draw(st.integers(0, 4))
    heads = np.zeros((n_heads, HEAD_COLUMNS), np.int64)
    held_rows: list[list[int]] = []
    for h in range(n_heads):
        heads[h, H_EXISTS] = draw(st.integers(0, 1))
        heads[h, H_ST] = draw(st.integers(0, 2))
        heads[h, H_T] = draw(TIME)
        rgs = draw(st.sets(GROUPS, max_size=3))
        heads[h, H_RES_LO] = len(held_rows)
        for rg in draw(st.permutations(sorted(rgs))):
            row = [0] * RES_COLUMNS
            row[RES_RG] = rg
            held_rows.append(row)
        heads[h, H_RES_HI] = len(held_rows)
    held = np.array(held_rows, np.int64).reshape(-1, RES_COLUMNS)
    reqs = []
    for _ in range(draw(st.integers(0, 6))):
        lo = draw(st.integers(0, n_units))
        hi = draw(st.integers(lo, n_units))
        span = draw(st.sampled_from(spans))
        reqs.append((lo, hi, draw(st.integers(1, 4)), draw(TIME), draw(st.integers(0, 3)),
                     draw(st.integers(-1, 2)), *span, draw(st.integers(-50_400_000, 50_400_000)),
                     draw(st.integers(-1, n_heads - 1)), draw(st.integers(0, 1))))
    return (units, np.array(reqs, np.int64).reshape(-1, items.Q_COLUMNS), prices, rate_table,
            heads, held, draw(TIME))


@settings(max_examples=600, deadline=None)
@given(batches())
def test_item_rows_are_the_references(batch: tuple[Any, ...]) -> None:
    got_items, got_shown, got_service, got_slots = items.item_rows(*batch)
    want_items, want_shown, want_service, want_slots = items_reference.item_rows(*batch)
    assert got_items.tolist() == want_items
    assert got_shown.tolist() == want_shown
    assert got_service.tolist() == want_service
    assert list(zip(*got_slots.tolist(), strict=True)) == want_slots


def test_a_termination_releases_what_it_does_not_mention() -> None:
    """A TERMINATION naming rating group 7 of a session holding 9, 7 and 3: items for 7 (as
    sent), then releases of 3 and 9 (not shown), all at the request's account and time."""
    units = np.zeros((U_ROWS, 1), np.int64)
    units[U_RATING_GROUP, 0] = 7
    heads = np.zeros((1, HEAD_COLUMNS), np.int64)
    heads[0, [H_EXISTS, H_T, H_RES_LO, H_RES_HI]] = 1, 500, 0, 3
    held = np.zeros((3, RES_COLUMNS), np.int64)
    held[:, RES_RG] = 9, 7, 3
    reqs = np.zeros((1, items.Q_COLUMNS), np.int64)
    reqs[0, [items.Q_HI, items.Q_TYPE, items.Q_TIME, items.Q_ACCT, items.Q_MEMBER]] = (
        1, int(RequestType.TERMINATION), 800, 2, -1)
    rows, shown, service, slots = items.item_rows(
        units, reqs, np.zeros((2, 0), np.int64), np.zeros((R_GRID_SHIFT + 1, 0), np.int64),
        heads, held, 1000)
    assert rows[:, I_RG].tolist() == [7, 3, 9]
    assert shown.tolist() == [1, 0, 0] and service.tolist() == [0, 0, 0]
    assert rows[:, I_ACCT].tolist() == [2, 2, 2] and rows[:, I_RATE].tolist() == [-1, -1, -1]
    assert rows[:, I_START].tolist() == [500] * 3  # the session's last report
    assert slots.tolist() == [[2, 2, 2], [3, 7, 9]]
