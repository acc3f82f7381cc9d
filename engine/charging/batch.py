"""Batch assembly: queued requests and cached state -> the kernel's struct-of-arrays, and back."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

import numpy as np

from tollgate.engine.charging.cache import T_RESERVED, AccountCache, Gathered
from tollgate.engine.charging.decode import MAX_TIME_MS
from tollgate.engine.charging.kernels.account_cache import T_MEMBERS_HI, T_MEMBERS_LO
from tollgate.engine.charging.kernels.account_tables import change_rows
from tollgate.engine.charging.kernels.charge import (
    A_BUCKETS_HI,
    A_BUCKETS_LO,
    A_LOW_MARK,
    B_LEVEL,
    B_REMAINING,
    FLAG_GRACE,
    I_ACCT,
    M_SPENT,
    U_USED,
    charge_kernel,
)
from tollgate.engine.charging.kernels.items import Q_COLUMNS, item_rows
from tollgate.engine.charging.kernels.sessions import session_columns
from tollgate.engine.charging.request import Request
from tollgate.engine.charging.sessions import SessionView
from tollgate.engine.charging.wire import U_ROWS
from tollgate.engine.domain import (
    Member,
    Plan,
)
from tollgate.engine.rating.plans import Prefixes, RateTable, resolve_zone
from tollgate.engine.storage.state import AccountState

ITEM_COLUMNS = ("acct", "member", "rg", "rate", "start", "time", "used", "want", "requested",
                "flags", "res_src", "res_units", "res_amount", "cycle_slot", "now", "s_used",
                "s_billed", "s_rem", "s_charged", "s_cost", "request")
"""The kernel's `items` columns, kernels.charge I_* (local times: the plan's UTC offset added;
`now` is the server's clock, UTC)."""


LATEST_LOCAL_MS = MAX_TIME_MS - 2 * 86_400_000


@dataclass(slots=True)
class KernelResult:
    """The kernel's outputs, with the batch's tables the outcome reads beside them."""

    change_rows: np.ndarray  # (account, what, index, new value) of each output that moved
    charge_table: np.ndarray  # the balances each item charged: rows item (nondecreasing),
    # source (a bucket's position, MONEY_SOURCE), units, micros
    events: list[tuple[int, int, int, int, int, int]]  # (item, kind, ref, level, value, limit)
    items: np.ndarray  # the kernel's item table (a row per item, ITEM_COLUMNS columns)
    outputs: np.ndarray  # the kernel's item outputs (kernels.charge O_* rows)
    shown: np.ndarray  # per item, 1 if its grant is in its request's answer (0: a release
    # the TERMINATION did not mention)
    service: np.ndarray  # per item, its service id (answers and records state it)


@dataclass(slots=True)
class KernelBatch:
    accounts: list[AccountState]
    index: dict[str, int]  # account id -> position
    distinct_plans: list[Plan | None]  # each plan of the batch once (None: not found)
    plan_of: np.ndarray  # per account, its plan's position in distinct_plans (int64)
    members: list[tuple[int, Member]]  # (account position, member)
    items: np.ndarray  # a row per item, ITEM_COLUMNS (kernels.items.item_rows)
    shown: np.ndarray  # per item, 1 if its grant is in its request's answer (0: a release
    # the TERMINATION did not mention)
    service: np.ndarray  # per item, its service id
    slots: np.ndarray  # cycle slots (kernels.items): rows account position, rating group
    view: SessionView  # the batch's sessions; request n's is row view_rows[n]
    view_rows: np.ndarray  # int64
    requests: np.ndarray  # a row per request (kernels.items Q_*: its type, account, ...)
    cache: AccountCache
    gathered: Gathered  # the accounts', buckets' and members' numbers, from the cache
    low_marks: np.ndarray  # per account, its plan's low-balance mark
    renewals: dict[str, dict[str, int]]  # per account whose cycle was renewed, its fields
    cycle_units: np.ndarray  # per cycle slot, its units so far
    cycle_cols: np.ndarray  # per cycle slot, its column in the cache's cycle table (-1: none)

    def run(self, rates: RateTable) -> KernelResult:
        g, items = self.gathered, self.items
        heads, _, held, rated = self.view.arrays
        bad = session_columns(items, self.view_rows, heads, held, rated,
                              self.view.buf, self.names, self.bucket_names, g.bucket_start)
        if bad >= 0:
            raise ValueError(f"a session's reservation names a bucket its account "
                             f"({self.accounts[items[bad, I_ACCT]].account_id!r}) does not "
                             "have")
        accounts = np.empty((A_BUCKETS_HI + 1, len(self.accounts)), np.int64)
        accounts[:A_LOW_MARK] = g.accounts[:A_LOW_MARK]
        accounts[A_LOW_MARK] = self.low_marks
        accounts[A_BUCKETS_LO] = g.bucket_start[:-1]
        accounts[A_BUCKETS_HI] = g.bucket_start[1:]
        buckets, cycle = g.buckets[:T_RESERVED], self.cycle_units
        out, acct_out, bucket_out, member_out, units_out, cu, chg, ev = charge_kernel(
            items, rates.arrays(), accounts, buckets, g.rgs, g.members, g.units, cycle)
        events = list(zip(*ev.tolist(), strict=True))
        moved = self._changes(
            g.bucket_start,
            np.concatenate((accounts[:6].ravel(), buckets[B_REMAINING],
                            np.zeros(buckets.shape[1], dtype=np.int64), buckets[B_LEVEL],
                            g.members[M_SPENT:].ravel(), g.units[U_USED:].ravel(), cycle)),
            np.concatenate((acct_out.ravel(), bucket_out.ravel(), member_out.ravel(),
                            units_out.ravel(), cu)))
        return KernelResult(change_rows=moved,
                            charge_table=np.ascontiguousarray(chg), events=events,
                            items=items, outputs=out, shown=self.shown,
                            service=self.service)

    @property
    def names(self) -> np.ndarray:
        """The buckets' ids end to end (UTF-8; grouped by account, in order: account a's are
        gathered.bucket_start[a] .. [a + 1])."""
        return self.gathered.names

    @property
    def bucket_names(self) -> np.ndarray:
        """(offset in names, length) per bucket position."""
        return self.gathered.bucket_names

    def bucket_id(self, b: int) -> str:
        """The id of the bucket at position `b` (events name it)."""
        at, n = self.bucket_names[:, b].tolist()
        return self.names[at:at + n].tobytes().decode()

    def _changes(self, bucket_start: np.ndarray, before: np.ndarray, after: np.ndarray
                 ) -> np.ndarray:
        """The outputs that moved, a row each: (account, what, index, new value). `before` and
        `after` hold the kernel's account, bucket, member, member-unit and cycle rows end to
        end. Most buckets and members of an account do not move in a batch: one kernel
        compares the whole however small the batch (kernels.account_tables.change_rows)."""
        return change_rows(before, after, bucket_start,
                           np.array([a for a, _ in self.members], np.int64),
                           np.ascontiguousarray(self.slots[0]))

    def keep(self, res: KernelResult, refused: set[int]) -> None:
        """Brings the cache's tables up to the kernel's outputs (kernels.account_cache
        .keep_changes), except for the accounts at the positions `refused` (their apply was
        refused) and those the cache let go since the batch gathered them (their columns may
        be another account's now)."""
        g, cache, rows = self.gathered, self.cache, res.change_rows
        if cache.released != g.released:
            refused = refused | {a for a, acct in enumerate(self.accounts) if acct.row < 0}
        if refused:
            rows = rows[~np.isin(rows[:, 0], list(refused))]
        cache.keep(g, rows, self.slots, self.cycle_cols)


def assemble(batch: list[Request], cache: AccountCache, plans: dict[str, Plan],
             rates: RateTable, now_ms: int, view: SessionView, rows: list[int]
             ) -> KernelBatch:
    """One item per rating group of each request (plus releases of what a TERMINATION does
    not mention), in batch order (kernels.items.item_rows); accounts, buckets and members in
    first-seen order (a request of a subscriber in GRACE is for zero-rated service only),
    each account's cycle renewed first if it has ended; `now_ms`: the server's clock, which
    judges bucket expiry and cycles; request n's session is row `rows[n]` of `view`."""
    accounts: list[AccountState] = []
    cols: list[int] = []  # the accounts' table columns
    index: dict[str, int] = {}
    for p in batch:
        if p.account_id not in index:
            index[p.account_id] = len(accounts)
            acct = cache[p.account_id]
            accounts.append(acct)
            cols.append(acct.row)
    account_cols = np.array(cols, np.int64)
    # What a plan gives its accounts is looked up once per plan, then taken by position.
    plan_at: dict[str, int] = {}
    plan_of = np.fromiter([plan_at.setdefault(a.plan_id, len(plan_at)) for a in accounts],
                          np.int64, len(accounts))
    distinct = [plans.get(plan_id) for plan_id in plan_at]
    account_plans = [distinct[k] for k in plan_of.tolist()]
    renewals = cache.renew(accounts, account_cols, account_plans, now_ms)
    gathered = cache.gather(account_cols)
    members: list[tuple[int, Member]] = []
    member_index: dict[tuple[str, str], int] = {}
    if gathered.members.shape[1]:  # most batches have no shared account
        for a in np.flatnonzero(gathered.accounts[T_MEMBERS_HI]
                                > gathered.accounts[T_MEMBERS_LO]).tolist():
            acct = accounts[a]
            for sub, m in acct.members.items():
                member_index[(acct.account_id, sub)] = len(members)
                members.append((a, m))
    reqs = _request_rows(batch, index, account_plans, rates, member_index, rows)
    heads, _, held, _ = view.arrays
    items, shown, service, slots = item_rows(reqs.units, reqs.rows, reqs.prices,
                                             rates.arrays()[0], heads, held, now_ms)
    slots = np.ascontiguousarray(slots)  # a slice: kernels are compiled for C order
    cycle_units, cycle_cols = cache.cycle_slots(account_cols, slots)
    low_marks = np.array([p.low_balance_micros if p else 0 for p in distinct], np.int64)
    return KernelBatch(accounts, index, distinct, plan_of, members, items, shown, service,
                       slots, view, np.array(rows, np.int64), reqs.rows, cache, gathered,
                       low_marks[plan_of], renewals, cycle_units, cycle_cols)


class _Requests(NamedTuple):
    """item_rows' inputs from the batch's requests."""

    units: np.ndarray  # the units tables of the requests' messages, side by side
    rows: np.ndarray  # a row per request (kernels.items Q_*)
    prices: np.ndarray  # the rate rows of each plan and zone of the batch (P_* rows)


def _request_rows(batch: list[Request], index: dict[str, int], plans: list[Plan | None],
                  rates: RateTable, member_index: dict[tuple[str, str], int], rows: list[int]
                  ) -> _Requests:
    """Per request what it takes from its account and plan: a few lookups each (its
    rating groups are read by the kernel). Sets each request's rated zone (Request.rated_zone)."""
    tables: dict[int, int] = {}  # id of a message's units table -> its first column here
    units: list[np.ndarray] = []
    columns = 0
    spans: dict[tuple[int, str], tuple[int, int]] = {}  # (id of plan, zone) -> prices span
    prices: list[np.ndarray] = []
    priced = 0
    prefixes: dict[int, Prefixes] = {}  # id of plan -> its destination prefixes
    out: list[int] = []  # the rows end to end: a flat list becomes an array at half the cost
    for req, r in zip(batch, rows, strict=True):
        a = index[req.account_id]
        plan = plans[a]
        base = tables.get(id(req.units))
        if base is None:
            base = tables[id(req.units)] = columns
            units.append(req.units)
            columns += req.units.shape[1]
        zone = req.zone
        if not zone and req.destination and plan is not None:
            found = prefixes.get(id(plan))
            if found is None:
                found = prefixes[id(plan)] = rates.prefixes(plan)
            zone = resolve_zone(found, "", req.destination)
        req.rated_zone = zone
        span = spans.get((id(plan), zone))
        if span is None:
            table = rates.zone_rows(plan, zone) if plan is not None else NO_PRICES
            span = spans[(id(plan), zone)] = (priced, priced + table.shape[1])
            prices.append(table)
            priced = span[1]
        time_ms = req.time_ms
        out += (base + req.lo, base + req.hi, req.type, time_ms, a,
                member_index.get((req.account_id, req.subscriber_id), -1)
                if member_index else -1, span[0], span[1],
                local_offset_ms(plan.timezone, time_ms) if plan is not None and plan.timezone
                else 0, r,
                FLAG_GRACE if req.grace else 0)
    return _Requests(
        # One message's table as it is (wire.parse makes it C-contiguous, as the kernel is
        # compiled for), several side by side.
        units[0] if len(units) == 1 else np.concatenate(units, axis=1) if units
        else np.zeros((U_ROWS, 0), np.int64),
        np.fromiter(out, np.int64, len(out)).reshape(-1, Q_COLUMNS),
        np.concatenate(prices, axis=1) if prices else NO_PRICES)


NO_PRICES = np.zeros((2, 0), np.int64)


def local_offset_ms(timezone: str, time_ms: int) -> int:
    """UTC offset of the plan's time zone at a moment (time windows are local)."""
    if not timezone:
        return 0
    # The last two days of year 9999 have no local date east of UTC (datetime overflows);
    # the offset two days earlier is the same rule.
    at = min(time_ms, LATEST_LOCAL_MS)
    offset = _minute_offset(timezone, at // 60_000)
    return _offset_at(timezone, at) if offset is None else offset


@functools.lru_cache(maxsize=4096)
def _minute_offset(timezone: str, minute: int) -> int | None:
    """The offset through a whole minute, or None if it changes within it. A batch's
    requests fall in a few minutes: one cached lookup each instead of a datetime (about
    2.8 µs). Exact: a minute whose two ends have the same offset holds no change (time
    zones change at most once in a minute)."""
    first = _offset_at(timezone, minute * 60_000)
    last = _offset_at(timezone, min(minute * 60_000 + 59_999, LATEST_LOCAL_MS))
    return first if first == last else None


def _offset_at(timezone: str, time_ms: int) -> int:
    offset = datetime.fromtimestamp(time_ms / 1000, _zone(timezone)).utcoffset()
    return int(offset.total_seconds() * 1000) if offset else 0


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)
