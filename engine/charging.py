"""The charging engine: decode, batch, load, kernel, apply, answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine import keys
from engine.batcher import Batcher
from engine.config import Config
from engine.decode import Invalid, Request, decode, error_answer, units_message, units_of
from engine.domain import (
    MONEY_SOURCE,
    Plan,
    Rate,
    Reservation,
    RequestType,
    ResultCode,
    SubscriberState,
)
from engine.errors import NotFound
from engine.kernels.charge import charge_kernel
from engine.plans import RateTable
from engine.state import AccountState, SessionState, reservation_value
from engine.store import AccountWrite, SessionWrite, Store
from tollgate.v1 import charging_pb2 as pb
from tollgate.v1 import usage_pb2

log = logging.getLogger("tollgate.engine")

MAX_RERUNS = 50
"""A request whose account keeps changing under it is answered UNABLE_TO_COMPLY after this."""

DENIED_STATES = frozenset({SubscriberState.SUSPENDED, SubscriberState.TERMINATED})

WANT_NONE, WANT_GRANT, WANT_DEBIT = 0, 1, 2


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


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
    reserved_units: int  # units of the reservation the item replaces
    internal: bool  # a release of a reservation the request did not mention


class Engine:
    """Owns the batcher, the caches and the hot path; the servicers only translate."""

    def __init__(self, store: Store, config: Config,
                 clock: Callable[[], int] = wall_clock_ms) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.accounts: OrderedDict[str, AccountState] = OrderedDict()
        self._subscribers: dict[str, tuple[str, SubscriberState, float]] = {}
        self._plans: dict[str, tuple[Plan, float]] = {}
        self.rates = RateTable()
        self.batcher: Batcher[Pending] = Batcher(
            self._process, self._fail, config.max_batch, config.batch_window_ms / 1000,
            config.max_queue)
        self.conflicts = 0

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    # --- entry point ---------------------------------------------------------------------

    def submit(self, msgs: list[pb.ChargeRequest]) -> list[asyncio.Future[pb.ChargeAnswer]]:
        """Queues requests; each future resolves to its answer once its effects are in Redis.
        Raises Overloaded when the queue is full (nothing is queued then)."""
        loop = asyncio.get_running_loop()
        now = self.clock()
        futures: list[asyncio.Future[pb.ChargeAnswer]] = []
        pending: list[Pending] = []
        for msg in msgs:
            fut: asyncio.Future[pb.ChargeAnswer] = loop.create_future()
            futures.append(fut)
            try:
                request = decode(msg, self.config, now)
            except Invalid as e:
                fut.set_result(error_answer(msg, e.code, str(e)))
                continue
            pending.append(Pending(msg, request, fut))
        if pending:
            self.batcher.submit(pending)
        return futures

    async def charge(self, msgs: list[pb.ChargeRequest]) -> list[pb.ChargeAnswer]:
        return list(await asyncio.gather(*self.submit(msgs)))

    def _fail(self, batch: list[Pending], error: BaseException) -> None:
        for p in batch:
            self.accounts.pop(p.account_id, None)
            p.answer(error_answer(p.msg, ResultCode.UNABLE_TO_COMPLY,
                                  f"storage unavailable, retry: {type(error).__name__}"))

    # --- one batch ----------------------------------------------------------------------

    async def _process(self, batch: list[Pending]) -> list[Pending]:
        batch = await self._resolve_subscribers(batch)
        batch, deferred = self._one_request_per_session(batch)
        await self._load(batch)
        batch = self._check_sessions(batch)
        if not batch:
            return deferred
        await self._load_plans({self.accounts[p.account_id].plan_id for p in batch})
        return deferred + await self._run(batch)

    async def _resolve_subscribers(self, batch: list[Pending]) -> list[Pending]:
        now = time.monotonic()
        missing = sorted({p.request.subscriber_id for p in batch
                          if self._subscribers.get(p.request.subscriber_id, ("", 0, 0.0))[2]
                          <= now})
        if missing:
            ttl = now + self.config.subscriber_cache_s
            for sid, found in zip(missing, await self.store.read_subscribers(missing),
                                  strict=True):
                if found is None:
                    self._subscribers.pop(sid, None)
                else:
                    self._subscribers[sid] = (found[0], found[1], ttl)
        out = []
        for p in batch:
            sub = self._subscribers.get(p.request.subscriber_id)
            if sub is None:
                p.answer(error_answer(p.msg, ResultCode.USER_UNKNOWN,
                                      f"subscriber {p.request.subscriber_id!r} is not known"))
            elif sub[1] in DENIED_STATES:
                p.answer(error_answer(p.msg, ResultCode.END_USER_SERVICE_DENIED,
                                      f"subscriber is {sub[1].name}"))
            else:
                p.account_id = sub[0]
                out.append(p)
        return out

    @staticmethod
    def _one_request_per_session(batch: list[Pending]) -> tuple[list[Pending], list[Pending]]:
        """Exact retransmissions ride along with their original; a later request of a session
        already in the batch waits for the next batch (it must see this one's effects)."""
        first: dict[tuple[str, int], Pending] = {}
        sessions: set[str] = set()
        live, deferred = [], []
        for p in batch:
            key = (p.request.session_id, p.request.request_number)
            if key in first:
                first[key].followers.append(p)
            elif key[0] in sessions:
                deferred.append(p)
            else:
                first[key] = p
                sessions.add(key[0])
                live.append(p)
        return live, deferred

    async def _load(self, batch: list[Pending]) -> None:
        """Puts every account of the batch, with the sessions it needs, in the cache."""
        need: dict[str, set[str]] = {}
        for p in batch:
            acct = self.accounts.get(p.account_id)
            if acct is None or p.request.session_id not in acct.sessions:
                need.setdefault(p.account_id, set()).add(p.request.session_id)
            else:
                self.accounts.move_to_end(p.account_id)
        if not need:
            return
        wanted = [(a, sorted(s)) for a, s in need.items()]
        for (account_id, session_ids), (acct, sessions) in zip(
                wanted, await self.store.read_accounts(wanted), strict=True):
            if acct is None:
                self.accounts.pop(account_id, None)
                continue
            old = self.accounts.get(account_id)
            if old is not None and old.version == acct.version:
                acct.sessions = old.sessions
            for sid, s in zip(session_ids, sessions, strict=True):
                if s is not None:
                    acct.sessions[sid] = s
            self.accounts[account_id] = acct
        while len(self.accounts) > self.config.account_cache_size:
            self.accounts.popitem(last=False)

    def _check_sessions(self, batch: list[Pending]) -> list[Pending]:
        """Answers retransmissions from stored answers and refuses what the session state
        does not allow; returns the requests to charge."""
        out = []
        for p in batch:
            acct = self.accounts.get(p.account_id)
            req = p.request
            if acct is None:
                p.answer(error_answer(p.msg, ResultCode.UNABLE_TO_COMPLY,
                                      f"account of subscriber {req.subscriber_id!r} is missing"))
                continue
            s = acct.sessions.get(req.session_id)
            if s is not None and req.request_number in s.answers:
                p.answer(pb.ChargeAnswer.FromString(s.answers[req.request_number]))
                continue
            problem = self._session_problem(req, s)
            if problem is not None:
                p.answer(error_answer(p.msg, *problem))
                continue
            out.append(p)
        return out

    @staticmethod
    def _session_problem(req: Request, s: SessionState | None
                         ) -> tuple[ResultCode, str] | None:
        if req.type == RequestType.EVENT:
            if s is not None and not s.is_event:
                return ResultCode.INVALID_AVP_VALUE, "session_id belongs to a charging session"
            if s is not None and req.request_number < s.last_rn:
                return ResultCode.UNKNOWN_SESSION_ID, "request_number is older than the last one"
            return None
        if req.type == RequestType.INITIAL:
            if s is not None:
                return ResultCode.INVALID_AVP_VALUE, f"session {req.session_id!r} already exists"
            return None
        if s is None or s.is_event:
            return ResultCode.UNKNOWN_SESSION_ID, f"no open session {req.session_id!r}"
        if s.ended:
            return ResultCode.UNKNOWN_SESSION_ID, f"session {req.session_id!r} has ended"
        if req.request_number < s.last_rn:
            return (ResultCode.UNKNOWN_SESSION_ID,
                    f"request_number {req.request_number} is older than {s.last_rn}")
        return None

    async def _load_plans(self, plan_ids: set[str]) -> None:
        now = time.monotonic()
        for plan_id in plan_ids:
            cached = self._plans.get(plan_id)
            if cached is not None and cached[1] > now:
                continue
            version = await self.store.plan_version(plan_id)
            if cached is None or cached[0].version != version:
                try:
                    plan = await self.store.get_plan(plan_id, version)
                except NotFound:
                    log.error("plan %r of an account does not exist", plan_id)
                    continue
            else:
                plan = cached[0]
            self._plans[plan_id] = (plan, now + self.config.plan_refresh_s)

    # --- kernel, apply, answer ----------------------------------------------------------

    async def _run(self, batch: list[Pending]) -> list[Pending]:
        accounts: dict[str, int] = {}
        acct_list: list[AccountState] = []
        for p in batch:
            if p.account_id not in accounts:
                accounts[p.account_id] = len(acct_list)
                acct_list.append(self.accounts[p.account_id])
        bucket_start = np.zeros(len(acct_list) + 1, dtype=np.int64)
        bucket_start[1:] = np.cumsum([len(a.buckets) for a in acct_list])
        buckets = [b for a in acct_list for b in a.buckets]

        refs: list[ItemRef] = []
        cols: dict[str, list[int]] = {k: [] for k in (
            "acct", "rg", "rate", "time", "used", "want", "requested", "res_src", "res_amount")}
        for p in batch:
            a = accounts[p.account_id]
            acct = acct_list[a]
            req = p.request
            plan_entry = self._plans.get(acct.plan_id)
            rows = self.rates.rows(plan_entry[0]) if plan_entry else {}
            session = acct.sessions.get(req.session_id)
            held = dict(session.reservations) if session and not session.is_event else {}
            entries = [(it.rating_group, it.service_id, it.used, it.requested, False)
                       for it in req.items]
            if req.type == RequestType.TERMINATION:
                mentioned = {it.rating_group for it in req.items}
                entries += [(rg, 0, None, None, True) for rg in sorted(held) if rg not in mentioned]
            for rg, service_id, used_u, requested_u, internal in entries:
                row = rows.get((rg, req.zone), -1)
                rate = self.rates.rates[row] if row >= 0 else None
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
                        src = int(bucket_start[a]) + acct.bucket_index(res.bucket_id)
                refs.append(ItemRef(p, rg, service_id, rate, used,
                                    res.units if res else 0, internal))
                for k, v in (("acct", a), ("rg", rg), ("rate", row), ("time", req.time_ms),
                             ("used", used), ("want", want), ("requested", requested),
                             ("res_src", src), ("res_amount", amount)):
                    cols[k].append(v)

        i64 = {k: np.array(v, dtype=np.int64) for k, v in cols.items()}
        rg_lists = [b.rating_groups for b in buckets]
        (result, granted, res_src, res_amount, charged, money, money_reserved, remaining,
         bucket_reserved, chg_item, chg_src, chg_units, chg_money) = charge_kernel(
            i64["acct"], i64["rg"], i64["rate"], i64["time"], i64["used"], i64["want"],
            i64["requested"], i64["res_src"], i64["res_amount"], *self.rates.arrays(),
            np.array([a.money for a in acct_list], dtype=np.int64),
            np.array([-a.credit_limit for a in acct_list], dtype=np.int64),
            bucket_start,
            np.array([b.remaining for b in buckets], dtype=np.int64),
            np.array([int(b.unit_type) for b in buckets], dtype=np.int64),
            np.array([b.expiry_ms for b in buckets], dtype=np.int64),
            np.concatenate([[0], np.cumsum([len(r) for r in rg_lists])]).astype(np.int64),
            np.array([g for r in rg_lists for g in r], dtype=np.int64))

        charges_of: dict[int, list[tuple[int, int, int]]] = {}
        for i, s, u, m in zip(chg_item.tolist(), chg_src.tolist(), chg_units.tolist(),
                              chg_money.tolist(), strict=True):
            charges_of.setdefault(i, []).append((s, u, m))

        # Answers, session state and records, per request.
        answers: dict[int, pb.ChargeAnswer] = {}
        new_sessions: dict[int, SessionState] = {}
        writes: dict[str, AccountWrite] = {}
        result_l, granted_l, src_l, amount_l, charged_l = (
            result.tolist(), granted.tolist(), res_src.tolist(), res_amount.tolist(),
            charged.tolist())
        by_request: dict[int, list[int]] = {}
        for i, ref in enumerate(refs):
            by_request.setdefault(id(ref.pending), []).append(i)
        for p in batch:
            a = accounts[p.account_id]
            acct = acct_list[a]
            req = p.request
            plan = self._plans[acct.plan_id][0] if acct.plan_id in self._plans else None
            old = acct.sessions.get(req.session_id)
            ans = pb.ChargeAnswer(session_id=req.session_id, request_number=req.request_number,
                                  result=int(ResultCode.SUCCESS))
            new = SessionState(
                session_id=req.session_id, subscriber_id=req.subscriber_id,
                last_rn=req.request_number,
                ended=req.type in (RequestType.TERMINATION, RequestType.EVENT),
                is_event=req.type == RequestType.EVENT, last_time_ms=req.time_ms,
                answers=dict(old.answers) if old else {},
                reservations=dict(old.reservations) if old and not old.is_event else {})
            records: list[bytes] = []
            for i in by_request.get(id(p), []):
                ref = refs[i]
                new.reservations.pop(ref.rating_group, None)
                if cols["want"][i] == WANT_GRANT and granted_l[i] > 0:
                    s = src_l[i]
                    new.reservations[ref.rating_group] = Reservation(
                        ref.rating_group, buckets[s].bucket_id if s != MONEY_SOURCE else "",
                        granted_l[i], amount_l[i])
                if ref.internal:
                    continue
                ans.charged_micros += charged_l[i]
                ans.grants.append(self._grant(ref, result_l[i], granted_l[i],
                                              cols["want"][i]))
                if ref.used and i in charges_of:
                    records.append(self._record(
                        p, ref, plan, old, charges_of[i], buckets, charged_l[i]))
            if req.type == RequestType.TERMINATION:
                new.reservations.clear()
            blob = ans.SerializeToString()
            new.answers[req.request_number] = blob
            kept = self.config.answers_kept
            dropped = [rn for rn in new.answers if rn <= req.request_number - kept]
            for rn in dropped:
                del new.answers[rn]
            answers[id(p)] = ans
            new_sessions[id(p)] = new
            w = writes.get(p.account_id)
            if w is None:
                w = writes[p.account_id] = AccountWrite(
                    keys.account(acct.partition, acct.account_id), acct.version, {})
            w.records += records
            w.sessions.append(SessionWrite(
                keys.session(acct.partition, req.session_id),
                keys.account_sessions(acct.partition, acct.account_id), req.session_id,
                new.ended, self._session_fields(new, req, p.account_id, blob),
                [f"r:{rg}" for rg in (old.reservations if old else {})
                 if rg not in new.reservations] + [f"a:{rn}" for rn in dropped]))

        # Balance changes, per account.
        money_l, mres_l, rem_l, bres_l = (money.tolist(), money_reserved.tolist(),
                                          remaining.tolist(), bucket_reserved.tolist())
        for account_id, w in writes.items():
            a = accounts[account_id]
            acct = acct_list[a]
            inc = w.increments
            if money_l[a] != acct.money:
                inc["money"] = money_l[a] - acct.money
            if mres_l[a]:
                inc["mres"] = mres_l[a]
            for k in range(int(bucket_start[a]), int(bucket_start[a + 1])):
                b = buckets[k]
                if rem_l[k] != b.remaining:
                    inc[f"b:{b.bucket_id}:rem"] = rem_l[k] - b.remaining
                if bres_l[k]:
                    inc[f"b:{b.bucket_id}:res"] = bres_l[k]

        by_partition: dict[int, list[AccountWrite]] = {}
        owners: dict[int, list[str]] = {}
        for account_id, w in writes.items():
            p_no = acct_list[accounts[account_id]].partition
            by_partition.setdefault(p_no, []).append(w)
            owners.setdefault(p_no, []).append(account_id)
        retention_ms = self.config.answer_retention_s * 1000
        refused = await self.store.apply(by_partition, retention_ms)
        conflicted = {owners[p_no][g] for p_no, groups in refused.items() for g in groups}

        # Answer, or run again with fresh state when another writer moved the account.
        again: list[Pending] = []
        for account_id in writes:
            acct = self.accounts.get(account_id)
            if account_id in conflicted:
                self.accounts.pop(account_id, None)
                self.conflicts += 1
                continue
            if acct is None:
                continue
            a = accounts[account_id]
            acct.version += 1
            acct.money = money_l[a]
            acct.money_reserved += mres_l[a]
            for k in range(int(bucket_start[a]), int(bucket_start[a + 1])):
                b = buckets[k]
                b.remaining = rem_l[k]
                b.reserved += bres_l[k]
        for p in batch:
            if p.account_id in conflicted:
                p.reruns += 1
                if p.reruns > MAX_RERUNS:
                    p.answer(error_answer(p.msg, ResultCode.UNABLE_TO_COMPLY,
                                          "account is changing too fast, retry"))
                else:
                    again.append(p)
                continue
            new = new_sessions[id(p)]
            acct = self.accounts.get(p.account_id)
            if acct is not None:
                if new.ended and not new.is_event:
                    acct.sessions.pop(new.session_id, None)
                else:
                    acct.sessions[new.session_id] = new
            p.answer(answers[id(p)])
        return again

    @staticmethod
    def _session_fields(s: SessionState, req: Request, account_id: str,
                        answer: bytes) -> dict[str, bytes | str | int]:
        st = "event" if s.is_event else ("ended" if s.ended else "open")
        fields: dict[str, bytes | str | int] = {
            "rn": s.last_rn, "st": st, "t": s.last_time_ms, "sub": req.subscriber_id,
            "acct": account_id, f"a:{req.request_number}": answer}
        for rg, r in s.reservations.items():
            fields[f"r:{rg}"] = reservation_value(r)
        return fields

    @staticmethod
    def _grant(ref: ItemRef, result: int, granted: int, want: int) -> pb.ServiceGrant:
        g = pb.ServiceGrant(rating_group=ref.rating_group, service_id=ref.service_id,
                            result=result)
        rate = ref.rate
        if rate is None or result != ResultCode.SUCCESS or want == WANT_NONE:
            return g
        g.granted.CopyFrom(units_message(granted, rate.unit_type))
        if want == WANT_GRANT:
            g.validity_time_s = rate.validity_time_s
            g.quota_holding_time_s = rate.quota_holding_time_s
            if rate.threshold_percent:
                threshold = granted * rate.threshold_percent // 100
                if rate.unit_type == 1:
                    g.volume_threshold_octets = threshold
                elif rate.unit_type == 2:
                    g.time_threshold_s = threshold
        return g

    @staticmethod
    def _record(p: Pending, ref: ItemRef, plan: Plan | None, old: SessionState | None,
                charges: list[tuple[int, int, int]], buckets: list, money: int) -> bytes:
        req = p.request
        rate = ref.rate
        assert rate is not None
        overage = max(0, ref.used - ref.reserved_units) if req.type != RequestType.EVENT else 0
        return usage_pb2.RatedUsage(
            kind=usage_pb2.USAGE, account_id=p.account_id, subscriber_id=req.subscriber_id,
            session_id=req.session_id, request_number=req.request_number,
            rating_group=ref.rating_group, service_id=ref.service_id, zone=req.zone,
            unit_type=int(rate.unit_type), units=ref.used,
            start_time_ms=old.last_time_ms if old and not old.is_event else req.time_ms,
            end_time_ms=req.time_ms, plan_id=plan.plan_id if plan else "",
            plan_version=plan.version if plan else 0, price_micros=rate.price_micros,
            increment=rate.increment, money_micros=money,
            charges=[usage_pb2.BalanceCharge(
                bucket_id=buckets[s].bucket_id if s != MONEY_SOURCE else "", units=u, micros=m)
                for s, u, m in charges],
            overage=overage > 0, overage_units=overage, origin=req.origin,
        ).SerializeToString()
