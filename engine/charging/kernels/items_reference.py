"""Plain-Python twin of kernels/items.py, written for clarity (what assembly did request by
request before item_rows); used only by property tests."""

from __future__ import annotations

from typing import Any

from tollgate.engine.charging.kernels.charge import (
    I_CYCLE_SLOT,
    I_NOW,
    I_REQ,
    I_RES_SRC,
    R_UNIT,
    WANT_DEBIT,
    WANT_GRANT,
    WANT_NONE,
)
from tollgate.engine.charging.kernels.items import (
    EVENT,
    ITEM_WIDTH,
    OCTETS,
    P_RG,
    P_ROW,
    Q_ACCT,
    Q_FLAGS,
    Q_HI,
    Q_LO,
    Q_MEMBER,
    Q_OFFSET,
    Q_PRICE_HI,
    Q_PRICE_LO,
    Q_TIME,
    Q_TYPE,
    Q_VIEW,
    SECONDS,
)
from tollgate.engine.charging.kernels.sessions import (
    H_EXISTS,
    H_RES_HI,
    H_RES_LO,
    H_ST,
    H_T,
    RES_RG,
    ST_EVENT,
    TERMINATION,
)
from tollgate.engine.charging.wire import (
    U_HAS_REQUESTED,
    U_HAS_USED,
    U_RATING_GROUP,
    U_REQUESTED,
    U_SERVICE_ID,
    U_USED,
)
from tollgate.engine.domain import MONEY_SOURCE

Units = tuple[int, int, int, int, int] | None


def units_of(u: Units, unit: int) -> int:
    if u is None:
        return 0
    if unit == OCTETS:
        return u[0] if u[0] else u[1] + u[2]
    return u[3] if unit == SECONDS else u[4]


def _units(units: Any, first: int, flag: int, u: int) -> Units:
    """Column u's used or requested Units message (None: absent)."""
    if not units[flag][u]:
        return None
    return (int(units[first][u]), int(units[first + 1][u]), int(units[first + 2][u]),
            int(units[first + 3][u]), int(units[first + 4][u]))


def item_rows(units: Any, reqs: Any, prices: Any, rate_table: Any, heads: Any, held: Any,
              now_ms: int) -> tuple[list[list[int]], list[int], list[int], list[tuple[int, int]]]:
    """item_rows' results as lists: items (rows), shown, service, slots ((account, rg) pairs)."""
    items: list[list[int]] = []
    shown: list[int] = []
    service: list[int] = []
    for r, q in enumerate(reqs):
        q = [int(v) for v in q]
        rows = {int(prices[P_RG][c]): int(prices[P_ROW][c])
                for c in range(q[Q_PRICE_LO], q[Q_PRICE_HI])}
        row = q[Q_VIEW]
        live = row >= 0 and heads[row][H_EXISTS] and heads[row][H_ST] != ST_EVENT
        start = min(int(heads[row][H_T]), q[Q_TIME]) if live else q[Q_TIME]
        entries = []
        for u in range(q[Q_LO], q[Q_HI]):
            entries.append((int(units[U_RATING_GROUP][u]), int(units[U_SERVICE_ID][u]),
                            _units(units, U_USED, U_HAS_USED, u),
                            _units(units, U_REQUESTED, U_HAS_REQUESTED, u), 1))
        if q[Q_TYPE] == TERMINATION and live:
            mentioned = {e[0] for e in entries}
            held_rgs = sorted(int(held[h][RES_RG])
                              for h in range(heads[row][H_RES_LO], heads[row][H_RES_HI]))
            entries += [(rg, 0, None, None, 0) for rg in held_rgs if rg not in mentioned]
        for rg, service_id, used_u, requested_u, in_answer in entries:
            rate = rows.get(rg, -1)
            if rate >= 0:
                unit = int(rate_table[R_UNIT][rate])
                used, requested = units_of(used_u, unit), units_of(requested_u, unit)
            else:
                used, requested = 0, 0
            if q[Q_TYPE] == EVENT:
                want, used = WANT_DEBIT, used or requested
            elif requested_u is not None and q[Q_TYPE] != TERMINATION:
                want = WANT_GRANT
            else:
                want = WANT_NONE
            item = [0] * ITEM_WIDTH
            item[:10] = [q[Q_ACCT], q[Q_MEMBER], rg, rate, start + q[Q_OFFSET],
                         q[Q_TIME] + q[Q_OFFSET], used, want, requested, q[Q_FLAGS]]
            item[I_RES_SRC], item[I_NOW], item[I_REQ] = MONEY_SOURCE, now_ms, r
            items.append(item)
            shown.append(in_answer)
            service.append(service_id)
    slots = sorted({(item[0], item[2]) for item in items})
    slot_of = {pair: s for s, pair in enumerate(slots)}
    for item in items:
        item[I_CYCLE_SLOT] = slot_of[(item[0], item[2])]
    return items, shown, service, slots
