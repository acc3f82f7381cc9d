"""Batch assembly: queued requests and cached state -> the kernel's struct-of-arrays, and back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from engine.decode import Request, units_of
from engine.domain import MONEY_SOURCE, Bucket, Plan, Rate, RequestType
from engine.kernels.charge import charge_kernel
from engine.plans import RateTable
from engine.state import AccountState
from tollgate.v1 import charging_pb2 as pb

WANT_NONE, WANT_GRANT, WANT_DEBIT = 0, 1, 2
"""Per item: only commit usage; also grant new units; direct debit (EVENT), all or nothing."""

COLUMNS = ("acct", "rg", "rate", "time", "used", "want", "requested", "res_src", "res_amount")


@dataclass(slots=True, eq=False)
class Pending:
    """A decoded request waiting for its answer."""

    msg: pb.ChargeRequest
    request: Request
    future: asyncio.Future[pb.ChargeAnswer]
    account_id: str = ""
    reruns: int = 0
    followers: list[Pending] = field(default_factory=list)  # exact retransmissions in the batch

    def answer(self, ans: pb.ChargeAnswer) -> None:
        for p in (self, *self.followers):
            if not p.future.done():
                p.future.set_result(ans)
        self.followers.clear()


@dataclass(slots=True)
class ItemRef:
    """Where a kernel item came from, to turn its outputs back into answers and state."""

    pending: Pending
    rating_group: int
    service_id: int
    rate: Rate | None
    used: int
    want: int
    reserved_units: int  # units of the reservation the item replaces
    internal: bool  # release of a reservation the TERMINATION did not mention


@dataclass(slots=True)
class KernelResult:
    """Kernel outputs as Python lists (indexing numpy scalars one by one is slow)."""

    result: list[int]
    granted: list[int]
    res_src: list[int]
    res_amount: list[int]
    charged: list[int]
    money: list[int]
    money_reserved: list[int]
    remaining: list[int]
    bucket_reserved: list[int]
    charges: dict[int, list[tuple[int, int, int]]]  # item -> [(source, units, micros)]


@dataclass(slots=True)
class KernelBatch:
    accounts: list[AccountState]
    index: dict[str, int]  # account id -> position
    plans: list[Plan | None]  # per account
    bucket_start: list[int]  # buckets of account a: bucket_start[a] .. bucket_start[a+1]
    buckets: list[Bucket]
    refs: list[ItemRef]
    columns: dict[str, list[int]]
    items_of: dict[int, list[int]]  # id(pending) -> its items

    def run(self, rates: RateTable) -> KernelResult:
        i64 = {k: np.array(v, dtype=np.int64) for k, v in self.columns.items()}
        rg_lists = [b.rating_groups for b in self.buckets]
        rg_start = np.zeros(len(rg_lists) + 1, dtype=np.int64)
        rg_start[1:] = np.cumsum([len(r) for r in rg_lists])
        out = charge_kernel(  # type: ignore[call-arg]  # numba Dispatcher hides the signature
            *(i64[k] for k in COLUMNS), *rates.arrays(),
            np.array([a.money for a in self.accounts], dtype=np.int64),
            np.array([-a.credit_limit for a in self.accounts], dtype=np.int64),
            np.array(self.bucket_start, dtype=np.int64),
            np.array([b.remaining for b in self.buckets], dtype=np.int64),
            np.array([int(b.unit_type) for b in self.buckets], dtype=np.int64),
            np.array([b.expiry_ms for b in self.buckets], dtype=np.int64),
            rg_start, np.array([g for r in rg_lists for g in r], dtype=np.int64))
        (result, granted, res_src, res_amount, charged, money, money_reserved, remaining,
         bucket_reserved, chg_item, chg_src, chg_units, chg_money) = (a.tolist() for a in out)
        charges: dict[int, list[tuple[int, int, int]]] = {}
        for i, s, u, m in zip(chg_item, chg_src, chg_units, chg_money, strict=True):
            charges.setdefault(i, []).append((s, u, m))
        return KernelResult(result, granted, res_src, res_amount, charged, money, money_reserved,
                            remaining, bucket_reserved, charges)


def assemble(batch: list[Pending], cache: dict[str, AccountState],
             plans: dict[str, Plan], rates: RateTable) -> KernelBatch:
    """One item per rating group of each request (plus releases of what a TERMINATION does
    not mention), in batch order; accounts and their buckets in first-seen order."""
    accounts: list[AccountState] = []
    index: dict[str, int] = {}
    for p in batch:
        if p.account_id not in index:
            index[p.account_id] = len(accounts)
            accounts.append(cache[p.account_id])
    bucket_start = [0]
    for acct in accounts:
        bucket_start.append(bucket_start[-1] + len(acct.buckets))
    kb = KernelBatch(accounts, index, [plans.get(a.plan_id) for a in accounts], bucket_start,
                     [b for a in accounts for b in a.buckets], [],
                     {k: [] for k in COLUMNS}, {})
    for p in batch:
        a = index[p.account_id]
        _add_items(kb, p, a, rates)
    return kb


def _add_items(kb: KernelBatch, p: Pending, a: int, rates: RateTable) -> None:
    acct = kb.accounts[a]
    req = p.request
    plan = kb.plans[a]
    rows = rates.rows(plan) if plan is not None else {}
    session = acct.sessions.get(req.session_id)
    held = session.reservations if session is not None and not session.is_event else {}
    entries = [(it.rating_group, it.service_id, it.used, it.requested, False)
               for it in req.items]
    if req.type == RequestType.TERMINATION:
        mentioned = {it.rating_group for it in req.items}
        entries += [(rg, 0, None, None, True) for rg in sorted(held) if rg not in mentioned]
    mine = kb.items_of.setdefault(id(p), [])
    cols = kb.columns
    for rg, service_id, used_u, requested_u, internal in entries:
        row = rows.get((rg, req.zone), -1)
        rate = rates.rates[row] if row >= 0 else None
        used = units_of(used_u, rate.unit_type) if rate else 0
        requested = units_of(requested_u, rate.unit_type) if rate else 0
        if req.type == RequestType.EVENT:
            want, used = WANT_DEBIT, used or requested
        elif requested_u is not None and req.type != RequestType.TERMINATION:
            want = WANT_GRANT
        else:
            want = WANT_NONE
        res = held.get(rg)
        src, amount = MONEY_SOURCE, 0
        if res is not None:
            amount = res.amount
            if res.bucket_id:
                src = kb.bucket_start[a] + acct.bucket_index(res.bucket_id)
        mine.append(len(kb.refs))
        kb.refs.append(ItemRef(p, rg, service_id, rate, used, want,
                               res.units if res is not None else 0, internal))
        for k, v in zip(COLUMNS, (a, rg, row, req.time_ms, used, want, requested, src, amount),
                        strict=True):
            cols[k].append(v)
