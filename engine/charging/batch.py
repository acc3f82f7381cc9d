"""Batch assembly: queued requests and cached state -> the kernel's struct-of-arrays, and back."""

from __future__ import annotations

import asyncio
import functools
import itertools
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, cast
from zoneinfo import ZoneInfo

import numpy as np

from tollgate.engine.charging.decode import MAX_TIME_MS, Request, error_answer, units_of
from tollgate.engine.charging.kernels.charge import (
    B_LEVEL,
    B_REMAINING,
    FLAG_GRACE,
    I_ACCT,
    M_SPENT,
    U_USED,
    WANT_DEBIT,
    WANT_GRANT,
    WANT_NONE,
    charge_kernel,
)
from tollgate.engine.charging.kernels.sessions import RES_RG, session_columns
from tollgate.engine.charging.sessions import SessionView
from tollgate.engine.domain import (
    MONEY_SOURCE,
    Bucket,
    Member,
    Plan,
    Rate,
    RequestType,
    ResultCode,
)
from tollgate.engine.rating.plans import Prefixes, RateTable, rate_row, resolve_zone
from tollgate.engine.storage.state import AccountState

ITEM_COLUMNS = ("acct", "member", "rg", "rate", "start", "time", "used", "want", "requested",
                "flags", "res_src", "res_units", "res_amount", "cycle_slot", "now", "s_used",
                "s_billed", "s_rem", "s_charged", "s_cost", "request")
"""The kernel's `items` columns, kernels.charge I_* (local times: the plan's UTC offset added;
`now` is the server's clock, UTC)."""


LATEST_LOCAL_MS = MAX_TIME_MS - 2 * 86_400_000
TERMINATION, EVENT = int(RequestType.TERMINATION), int(RequestType.EVENT)


class Answers:
    """The answers to one gateway message, in its order, as ChargeAnswer bytes (each is also
    the request's stored answer), with their result codes (metrics): one future for the
    whole message (a future per request would cost the event loop a callback per request)."""

    __slots__ = ("answers", "future", "left", "results", "types")

    def __init__(self, types: list[int], future: asyncio.Future[list[bytes]]) -> None:
        n = len(types)
        self.types = types  # each request's type as sent (metrics)
        self.answers: list[bytes | None] = [None] * n
        self.results = [0] * n
        self.left = n
        self.future = future
        if not n and not future.done():
            future.set_result([])

    def put(self, slot: int, answer: bytes, result: int) -> None:
        if self.answers[slot] is None:
            self.answers[slot] = answer
            self.results[slot] = result
            self.left -= 1
            if self.left == 0 and not self.future.done():
                self.future.set_result(cast(list[bytes], self.answers))


@dataclass(slots=True, eq=False)
class Pending:
    """A decoded request waiting for its answer."""

    request: Request
    call: Answers
    slot: int  # its place in the call's answers
    account_id: str = ""
    grace: bool = False  # the subscriber is in GRACE (zero-rated service only)
    reruns: int = 0
    deadline: float = 0.0  # event-loop time by which it must be answered (request_deadline_s)
    followers: list[Pending] = field(default_factory=list)  # exact retransmissions in the batch
    zone: str = ""  # the zone it is rated in (its own, or its destination's by the plan)

    def answer(self, answer: bytes, result: int) -> None:
        self.call.put(self.slot, answer, result)
        for p in self.followers:
            p.call.put(p.slot, answer, result)
        self.followers.clear()

    def refuse(self, code: ResultCode, message: str) -> None:
        req = self.request
        self.answer(error_answer(req.session_id, req.request_number, code, message), code)


ACCOUNT_OUTPUTS = ("money", "money_reserved", "spent", "cap_level", "low_flag",
                   "exhausted_flag")
"""The kernel's account outputs (A_* rows 0-5) as AccountState attributes: a change's `what`
0-5 names one of them (its index is the account)."""
(REMAINING, RESERVED, NOTIFIED, MEMBER_SPENT, MEMBER_MRES, MEMBER_USED, MEMBER_RESERVED,
 CYCLE) = range(6, 14)
"""The other changes' `what`, and their index: a bucket's remaining units, its reserved units
(the value is the change), its notified level; a member's money spent and reserved, then its
units used and reserved (index: 3 * member + unit type - 1); the units of a cycle slot."""


@dataclass(slots=True)
class KernelResult:
    """Kernel outputs as Python lists (indexing numpy scalars one by one is slow)."""

    result: list[int]
    granted: list[int]
    res_src: list[int]
    res_amount: list[int]
    charged: list[int]
    validity: list[int]
    final: list[int]
    s_used: list[int]  # the session's rating-group state after a billed item (state.Rated;
    s_billed: list[int]  # all zero: unchanged)
    s_rem: list[int]
    s_charged: list[int]
    changes: list[tuple[int, int, int, int]]  # (account, what, index, new value) of what moved
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
    plans: list[Plan | None]  # per account
    bucket_start: list[int]  # buckets of account a: bucket_start[a] .. bucket_start[a+1]
    buckets: list[Bucket]
    members: list[tuple[int, Member]]  # (account position, member)
    member_index: dict[tuple[str, str], int]  # (account id, subscriber id) -> position
    cycle_slots: dict[tuple[int, int], int]  # (account position, rating group) -> slot
    rows: list[tuple[int, ...]]  # per item, its ITEM_COLUMNS values
    shown: list[int]  # per item, 1 if its grant is in its request's answer (0: a release
    # the TERMINATION did not mention)
    service: list[int]  # per item, its service id
    view: SessionView  # the batch's sessions; request n's is row view_rows[n]
    view_rows: list[int]
    names: np.ndarray  # the buckets' ids end to end (UTF-8)
    bucket_names: np.ndarray  # (offset in names, length) per bucket position
    slots: list[tuple[int, int]] = field(default_factory=list)  # slot -> (account, rg)

    def run(self, rates: RateTable) -> KernelResult:
        def i64(rows: list[list[int]]) -> np.ndarray:
            return np.array(rows, dtype=np.int64)

        accts, buckets, members = self.accounts, self.buckets, [m for _, m in self.members]
        rg_lists = [b.rating_groups for b in buckets]
        rg_end = list(itertools.accumulate(len(r) for r in rg_lists))
        # One conversion for the whole table (appending to a list per column costs more);
        # a row per item, as the kernel reads them.
        items = np.array(self.rows, dtype=np.int64).reshape(-1, len(ITEM_COLUMNS))
        heads, _, held, rated = self.view.arrays
        bad = session_columns(items, np.array(self.view_rows, np.int64), heads, held, rated,
                              self.view.buf,
                              self.names, self.bucket_names,
                              np.array(self.bucket_start, np.int64))
        if bad >= 0:
            raise ValueError(f"a session's reservation names a bucket its account "
                             f"({accts[items[bad, I_ACCT]].account_id!r}) does not have")
        accounts = i64([  # rows: kernels.charge A_*
            [a.money for a in accts], [a.money_reserved for a in accts],
            [a.spent for a in accts], [a.cap_level for a in accts],
            [a.low_flag for a in accts], [a.exhausted_flag for a in accts],
            [-a.credit_limit for a in accts], [a.cap for a in accts],
            [p.low_balance_micros if p else 0 for p in self.plans],
            self.bucket_start[:-1], self.bucket_start[1:]])
        bucket_rows = i64([  # rows: kernels.charge B_*
            [b.remaining for b in buckets], [int(b.unit_type) for b in buckets],
            [b.expiry_ms for b in buckets], [b.initial for b in buckets],
            [b.notified for b in buckets], [0, *rg_end][:-1], rg_end])
        member_rows = i64([[m.cap_money for m in members], [m.spent for m in members],
                           [m.money_reserved for m in members]])
        unit_rows = i64([[u for m in members for u in m.cap_units],
                         [u for m in members for u in m.used_units],
                         [u for m in members for u in m.reserved_units]])
        cycle = np.array([accts[a].cycle_units.get(rg, 0) for a, rg in self.slots],
                         dtype=np.int64)
        out, acct_out, bucket_out, member_out, units_out, cu, chg, ev = charge_kernel(
            items, rates.arrays(), accounts, bucket_rows,
            np.array([g for r in rg_lists for g in r], dtype=np.int64), member_rows, unit_rows,
            cycle)
        events = list(zip(*ev.tolist(), strict=True))
        changes = self._changes(
            np.concatenate((accounts[:6].ravel(), bucket_rows[B_REMAINING],
                            np.zeros(len(buckets), dtype=np.int64), bucket_rows[B_LEVEL],
                            member_rows[M_SPENT:].ravel(), unit_rows[U_USED:].ravel(), cycle)),
            np.concatenate((acct_out.ravel(), bucket_out.ravel(), member_out.ravel(),
                            units_out.ravel(), cu)))
        return KernelResult(*out.tolist(), changes=changes,  # type: ignore[misc]
                            charge_table=np.ascontiguousarray(chg), events=events,
                            items=items, outputs=out,
                            shown=np.array(self.shown, np.int64),
                            service=np.array(self.service, np.int64))

    def _changes(self, before: np.ndarray, after: np.ndarray
                 ) -> list[tuple[int, int, int, int]]:
        """The outputs that moved, as (account, what, index, new value). `before` and `after`
        hold the kernel's account, bucket, member, member-unit and cycle rows end to end.
        Only these are turned into Python objects: most buckets and members of an account do
        not move in a batch, and one comparison of the whole is a few array calls however
        small the batch."""
        n_a, n_b, n_m = len(self.accounts), len(self.buckets), len(self.members)
        bucket_owner = [a for a in range(n_a)
                        for _ in range(self.bucket_start[a + 1] - self.bucket_start[a])]
        at = np.flatnonzero(after != before)
        changes = []
        for p, v in zip(at.tolist(), after[at].tolist(), strict=True):
            if p < 6 * n_a:
                what, i = divmod(p, n_a)
                changes.append((i, what, i, v))
                continue
            p -= 6 * n_a
            if p < 3 * n_b:
                what, i = divmod(p, n_b)
                changes.append((bucket_owner[i], REMAINING + what, i, v))
                continue
            p -= 3 * n_b
            if p < 2 * n_m:
                what, i = divmod(p, n_m)
                changes.append((self.members[i][0], MEMBER_SPENT + what, i, v))
                continue
            p -= 2 * n_m
            if p < 6 * n_m:
                what, i = divmod(p, 3 * n_m)
                changes.append((self.members[i // 3][0], MEMBER_USED + what, i, v))
                continue
            p -= 6 * n_m
            changes.append((self.slots[p][0], CYCLE, p, v))
        return changes

    def keep(self, res: KernelResult, refused: set[int]) -> None:
        """Brings the cached state this batch read up to the kernel's outputs, except for the
        accounts at the positions `refused` (their apply was refused)."""
        accounts, buckets, members = self.accounts, self.buckets, self.members
        for a, what, i, v in res.changes:
            if a in refused:
                continue
            if what < REMAINING:
                setattr(accounts[a], ACCOUNT_OUTPUTS[what], v)
            elif what == REMAINING:
                buckets[i].remaining = v
            elif what == RESERVED:
                buckets[i].reserved += v
            elif what == NOTIFIED:
                buckets[i].notified = v
            elif what == MEMBER_SPENT:
                members[i][1].spent = v
            elif what == MEMBER_MRES:
                members[i][1].money_reserved = v
            elif what == MEMBER_USED:
                members[i // 3][1].used_units[i % 3] = v
            elif what == MEMBER_RESERVED:
                members[i // 3][1].reserved_units[i % 3] = v
            else:
                accounts[a].cycle_units[self.slots[i][1]] = v


def assemble(batch: list[Pending], cache: dict[str, AccountState], plans: dict[str, Plan],
             rates: RateTable, grace: set[str], now_ms: int, view: SessionView,
             rows: list[int]) -> KernelBatch:
    """One item per rating group of each request (plus releases of what a TERMINATION does
    not mention), in batch order; accounts, buckets and members in first-seen order.
    `grace`: subscribers in GRACE (zero-rated service only); `now_ms`: the server's clock,
    which judges bucket expiry; request n's session is row `rows[n]` of `view`."""
    accounts: list[AccountState] = []
    index: dict[str, int] = {}
    for p in batch:
        if p.account_id not in index:
            index[p.account_id] = len(accounts)
            accounts.append(cache[p.account_id])
    bucket_start = [0]
    for acct in accounts:
        bucket_start.append(bucket_start[-1] + len(acct.buckets))
    members: list[tuple[int, Member]] = []
    member_index: dict[tuple[str, str], int] = {}
    for a, acct in enumerate(accounts):
        for sub, m in acct.members.items():
            member_index[(acct.account_id, sub)] = len(members)
            members.append((a, m))
    buckets = [b for a in accounts for b in a.buckets]
    names = [b.bucket_id.encode() for b in buckets]
    lengths = np.fromiter(map(len, names), np.int64, len(names))
    kb = KernelBatch(accounts, index, [plans.get(a.plan_id) for a in accounts], bucket_start,
                     buckets, members, member_index, {}, [], [], [], view, rows,
                     np.frombuffer(b"".join(names), np.uint8),
                     np.stack((np.cumsum(lengths) - lengths, lengths)))
    # Looked up once per plan: a batch's accounts share a few plans.
    by_plan = {k: _pricing(plan, rates) for k, plan in {id(p): p for p in kb.plans}.items()}
    pricing = [by_plan[id(plan)] for plan in kb.plans]
    for n, (p, r) in enumerate(zip(batch, rows, strict=True)):
        a = index[p.account_id]
        _add_items(kb, p, a, pricing[a], rates.rates, p.request.subscriber_id in grace,
                   now_ms, n, view, r)
    return kb


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


class _Pricing(NamedTuple):
    """What pricing an account's requests needs from its plan, looked up once per batch."""

    plan: Plan | None
    rows: dict[tuple[int, str], int]  # (rating group, zone) -> rate row
    prefixes: Prefixes | None  # the plan's destination prefixes (None: no plan)


def _pricing(plan: Plan | None, rates: RateTable) -> _Pricing:
    if plan is None:
        return _Pricing(None, {}, None)
    return _Pricing(plan, rates.rows(plan), rates.prefixes(plan))


def _add_items(kb: KernelBatch, p: Pending, a: int, pricing: _Pricing, rates: list[Rate],
               grace: bool, now_ms: int, request: int, view: SessionView, r: int) -> None:
    req = p.request
    kind = req.type
    plan, rows = pricing.plan, pricing.rows
    if req.zone or pricing.prefixes is None or not req.destination:
        p.zone = zone = req.zone
    else:
        p.zone = zone = resolve_zone(pricing.prefixes, "", req.destination)
    # The columns the session gives (its reservations, what it rated, its cost) are filled
    # for the whole batch by kernels.sessions.session_columns.
    live = view.live(r)
    start = view.last_time_ms(r) if live else req.time_ms
    time_ms = req.time_ms
    offset = local_offset_ms(plan.timezone, time_ms) if plan is not None else 0
    start = min(start, time_ms) + offset
    member = kb.member_index.get((p.account_id, req.subscriber_id), -1) if kb.member_index else -1
    entries = [(it.rating_group, it.service_id, it.used, it.requested, 1) for it in req.items]
    if kind == TERMINATION and live:
        mentioned = {it.rating_group for it in req.items}
        entries += [(rg, 0, None, None, 0) for rg in sorted(h[RES_RG] for h in view.held_rows(r))
                    if rg not in mentioned]
    item_rows, cycle_slots, shown, service = kb.rows, kb.cycle_slots, kb.shown, kb.service
    base_flags = FLAG_GRACE if grace else 0
    for rg, service_id, used_u, requested_u, in_answer in entries:
        row = rate_row(rows, plan, rg, zone)
        if row >= 0:
            unit = rates[row].unit_type
            used, requested = units_of(used_u, unit), units_of(requested_u, unit)
        else:
            used, requested = 0, 0
        if kind == EVENT:
            want, used = WANT_DEBIT, used or requested
        elif requested_u is not None and kind != TERMINATION:
            want = WANT_GRANT
        else:
            want = WANT_NONE
        slot = cycle_slots.get((a, rg), -1)
        if slot < 0:
            slot = cycle_slots[(a, rg)] = len(cycle_slots)
            kb.slots.append((a, rg))
        shown.append(in_answer)
        service.append(service_id)
        item_rows.append((a, member, rg, row, start, time_ms + offset, used, want, requested,
                          base_flags, MONEY_SOURCE, 0, 0, slot, now_ms, 0, 0, 0, 0, 0, request))
