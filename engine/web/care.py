"""Customer care's subscriber view and its actions, and the subscriber's own (self-service)
view: read from the account, its partition streams (a bounded look back) and the lifecycle's
log; every change goes through the Provisioner, as the gRPC Provisioning API does."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from tollgate.engine.domain import SubscriberState, UnitType
from tollgate.engine.errors import InvalidArgument, NotFound
from tollgate.engine.lifecycle import signals
from tollgate.engine.provisioning import Provisioner
from tollgate.engine.storage import keys, record_block
from tollgate.engine.storage.store import Store
from tollgate.engine.web import churn, runout, segments
from tollgate.v1 import events_pb2, usage_pb2
from tollgate.v1 import provisioning_pb2 as pb

log = logging.getLogger("tollgate.web")

LOOK_BACK = 2000
"""Newest entries of the account's partition streams read for its records and events: a
bounded cost per page, so a busy partition shows a shorter history (never a slow page)."""
SHOWN = 20
DAY_MS = runout.DAY_MS
UNIT_WORDS = {UnitType.OCTETS: "MB of data", UnitType.SECONDS: "minutes of calls",
              UnitType.SERVICE_UNITS: "messages"}
UNIT_SCALE = {UnitType.OCTETS: 1_000_000, UnitType.SECONDS: 60, UnitType.SERVICE_UNITS: 1}


def money_micros(text: str, what: str) -> int:
    """'12.50' (the account currency) -> micro-units."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise InvalidArgument(f"{what} must be an amount such as 10.00; got {text!r}") from None
    micros = value * 1_000_000
    if not value.is_finite() or micros != micros.to_integral_value():
        raise InvalidArgument(f"{what} has more than 6 decimals: {text!r}")
    return int(micros)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class History:
    """What the bounded look back found of one account."""

    records: list[usage_pb2.RatedUsage]  # newest first
    events: list[events_pb2.Event]  # newest first
    complete: bool
    """The look back reached the start of the usage stream (the history is whole)."""


class Care:
    def __init__(self, store: Store, provisioner: Provisioner) -> None:
        self.store = store
        self.prov = provisioner

    async def history(self, account_id: str) -> History:
        p = self.store.partition(account_id)
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.xrevrange(keys.usage_stream(p), count=LOOK_BACK)
        pipe.xrevrange(keys.events_stream(p), count=LOOK_BACK)
        usage, events = await pipe.execute()
        # An entry is one record or a block of them (engine/storage/record_block.py), newest first.
        records = [r for r in (usage_pb2.RatedUsage.FromString(data) for sid, f in usage
                               for _, data in reversed(record_block.records(sid, f)))
                   if r.account_id == account_id]
        evs = [e for e in (events_pb2.Event.FromString(f[b"e"]) for _, f in events)
               if e.account_id == account_id]
        return History(records, evs, len(usage) < LOOK_BACK)

    async def find(self, query: str) -> list[dict[str, str]]:
        """Subscribers whose id, or whose account's id, is the query."""
        query = query.strip()
        if not query:
            return []
        out = []
        found = (await self.store.read_subscribers([query]))[0]
        if found is not None:
            out.append({"subscriber_id": query, "account_id": found[0],
                        "state": found[1].name})
        try:
            await self.store.account_plan(query)
        except NotFound:
            return out
        subs = await self.store.account_subscribers(query)
        for sid, f in zip(subs, await self.store.read_subscribers(subs), strict=True):
            if f is not None and sid != query:
                out.append({"subscriber_id": sid, "account_id": query, "state": f[1].name})
        return out

    async def view(self, subscriber_id: str, *, self_service: bool = False) -> dict[str, Any]:
        """The subscriber page's data. Self-service shows only what is the subscriber's own
        or its account's (never another member's usage or messages)."""
        account_id, state = await self.store.get_subscriber(subscriber_id)
        acct = await self.prov.get_account(pb.GetAccountRequest(account_id=account_id))
        plan = await self.store.get_plan(acct.plan_id)
        hist = await self.history(account_id)
        now = _now_ms()
        mine = [r for r in hist.records if not self_service or r.subscriber_id in
                ("", subscriber_id)]
        balances = [runout.Balance(runout.MONEY, acct.money_micros),
                    *(runout.Balance(b.bucket_id, b.remaining, b.expiry_ms)
                      for b in acct.buckets)]
        runouts = runout.predict(balances, uses(hist.records), now)
        view: dict[str, Any] = {
            "subscriber_id": subscriber_id, "account_id": account_id, "state": state.name,
            "plan": {"id": plan.plan_id, "name": plan.name, "version": plan.version},
            "currency": plan.currency,
            "money": acct.money_micros, "reserved": acct.reserved_micros,
            "credit_limit": acct.credit_limit_micros,
            "cap": acct.spending_cap_micros, "cycle_spent": acct.cycle_spent_micros,
            "cycle_end_ms": acct.cycle_end_ms,
            "buckets": [{"id": b.bucket_id, "unit": UnitType(b.unit_type).name,
                         "initial": b.initial, "remaining": b.remaining,
                         "reserved": b.reserved, "used": b.used, "expiry_ms": b.expiry_ms}
                        for b in acct.buckets],
            "runout": [{"id": r.id or "money", "left": r.left, "per_day": round(r.per_day),
                        "at_ms": r.at_ms, "expires_first": r.expires_first}
                       for r in runouts],
            "runout_line": runout.headline(runouts, now, plan.currency),
            "addons": [{"id": a.addon_id, "name": a.name or a.addon_id,
                        "price": a.price_micros, "units": a.bundle.units,
                        "unit": a.bundle.unit_type.name} for a in plan.addons],
            "records": [_record(r) for r in mine[:SHOWN]],
            "history_complete": hist.complete,
            "usage_words": usage_words(mine, now),
        }
        if self_service:
            return view
        view["sessions"] = [{"session_id": r.session_id, "rating_group": r.rating_group,
                             "bucket": r.bucket_id, "units": r.units, "amount": r.amount}
                            for r in acct.reservations]
        view["members"] = [m.subscriber_id for m in acct.members]
        view["events"] = [_event(e) for e in hist.events[:SHOWN]]
        notes = cast(list[bytes], await self.store.redis.lrange(
            keys.lc_log(subscriber_id), 0, SHOWN - 1))
        view["notifications"] = [json.loads(n) for n in notes]
        kept = (await signals.read(self.store.redis, [subscriber_id]))[0]
        scored = await segments.score_lines(self.store, [subscriber_id], now) \
            if set(kept) - {signals.LAST} else []
        # The lifecycle's kept signals (what the segments page ranks by) when it has any;
        # else what the bounded look back shows.
        risk = scored[0].risk if scored else churn.risk(
            await self.signals(subscriber_id, state, hist, view, now))
        view["churn"] = {"score": risk.score, "band": risk.band.value,
                         "reasons": [{"points": r.points, "text": r.text}
                                     for r in risk.reasons]}
        return view

    async def signals(self, subscriber_id: str, state: SubscriberState, hist: History,
                      view: dict[str, Any], now: int) -> churn.Signals:
        """The churn signals the bounded history shows (an unknown one is left None)."""
        covered = hist.complete or bool(hist.records and
                                        now - _time(hist.records[-1]) >= 35 * DAY_MS)
        topups = [_time(r) for r in hist.records if r.kind == usage_pb2.TOP_UP]
        since_topup = (now - max(topups)) / DAY_MS if topups else (
            35.0 if covered and hist.records else None)
        use = [r for r in hist.records if r.kind == usage_pb2.USAGE
               and r.subscriber_id == subscriber_id]
        week = average = None
        if covered:
            week = float(sum(r.money_micros + r.units for r in use
                             if now - _time(r) < 7 * DAY_MS))
            average = sum(r.money_micros + r.units for r in use
                          if 7 * DAY_MS <= now - _time(r) < 35 * DAY_MS) / 4
        grace = None
        if state == SubscriberState.GRACE:
            since = [e.time_ms for e in hist.events if e.subscriber_id == subscriber_id
                     and e.kind in (events_pb2.STATE_CHANGED, events_pb2.CREDIT_EXHAUSTED)]
            grace = (now - min(since)) / DAY_MS if since else 0.0
        refused = sum(1 for e in hist.events if e.kind == events_pb2.CREDIT_EXHAUSTED
                      and e.subscriber_id == subscriber_id and now - e.time_ms < 7 * DAY_MS)
        offers = {n["offer_id"] for n in view["notifications"]
                  if n.get("offer_id") and now - int(n.get("time_ms", 0)) < 30 * DAY_MS}
        ignored = 0
        for offer in sorted(offers):
            if not await self.store.redis.hexists(keys.lc_offer(offer), "bought"):
                ignored += 1
        return churn.Signals(days_since_topup=since_topup, usage_this_week=week,
                             usage_weekly_average=average, days_in_grace=grace,
                             grants_refused_week=refused, offers_ignored=ignored)

    # --- actions: the Provisioning API's own methods ---------------------------------------

    async def act(self, who: str, subscriber_id: str, action: str, body: dict[str, Any]
                  ) -> dict[str, Any]:
        """One action, logged with who asked. Top-ups and add-ons carry the page's
        idempotency key: a form sent twice applies once."""
        key = str(body.get("key", ""))
        if action in ("topup", "addon") and not key:
            raise InvalidArgument("key (the form's idempotency key) is missing")
        account_id, _ = await self.store.get_subscriber(subscriber_id)
        result: dict[str, Any]
        if action == "topup":
            amount = money_micros(body.get("amount", ""), "amount")
            ans = await self.prov.top_up(pb.TopUpRequest(
                topup_id=f"web-{key}", account_id=account_id, amount_micros=amount))
            result = {"applied": ans.applied, "money": ans.money_micros}
        elif action == "addon":
            bought = await self.prov.buy_add_on(pb.BuyAddOnRequest(
                order_id=f"web-{key}", account_id=account_id,
                addon_id=str(body.get("addon_id", ""))))
            result = {"applied": bought.applied, "money": bought.account.money_micros}
        elif action == "cap":
            acct = await self.prov.set_spending_cap(pb.SetSpendingCapRequest(
                account_id=account_id, cap_micros=money_micros(body.get("cap", ""), "cap")))
            result = {"cap": acct.spending_cap_micros}
        elif action == "state":
            name = str(body.get("state", ""))
            if name not in SubscriberState.__members__:
                raise InvalidArgument(f"state must be one of "
                                      f"{', '.join(SubscriberState.__members__)}; got {name!r}")
            sub = await self.prov.set_subscriber_state(pb.Subscriber(
                subscriber_id=subscriber_id, state=int(SubscriberState[name])))
            result = {"state": SubscriberState(sub.state).name}
        else:
            raise NotFound(f"no action {action!r}")
        log.info("web action", extra={"operator": who, "action": action,
                                      "subscriber_id": subscriber_id,
                                      "account_id": account_id, "request": body,
                                      "result": result})
        return result


def _time(r: usage_pb2.RatedUsage) -> int:
    return r.end_time_ms or r.start_time_ms


def uses(records: list[usage_pb2.RatedUsage]) -> list[runout.Use]:
    out = []
    for r in records:
        if r.kind != usage_pb2.USAGE:
            continue
        units: dict[str, int] = {}
        for c in r.charges:
            if c.bucket_id:
                units[c.bucket_id] = units.get(c.bucket_id, 0) + c.units
        out.append(runout.Use(_time(r), r.money_micros, units))
    return out


def usage_words(records: list[usage_pb2.RatedUsage], now: int) -> str:
    """'In the last 7 days: 120 MB of data, 14 minutes of calls; 3.20 charged.'"""
    units: dict[UnitType, int] = {}
    money = 0
    for r in records:
        if r.kind == usage_pb2.USAGE and now - _time(r) < 7 * DAY_MS:
            if r.unit_type in UnitType._value2member_map_:
                u = UnitType(r.unit_type)
                units[u] = units.get(u, 0) + r.units
            money += r.money_micros
    if not units and not money:
        return "No use in the last 7 days."
    parts = [f"{n / UNIT_SCALE[u]:,.0f} {UNIT_WORDS[u]}" for u, n in sorted(units.items())]
    return (f"In the last 7 days: {', '.join(parts) or 'no metered units'}; "
            f"{money / 1e6:,.2f} charged to the balance.")


def _record(r: usage_pb2.RatedUsage) -> dict[str, Any]:
    return {"kind": usage_pb2.RecordKind.Name(r.kind), "time_ms": _time(r),
            "subscriber_id": r.subscriber_id, "session_id": r.session_id,
            "rating_group": r.rating_group, "units": r.units, "money": r.money_micros,
            "unit": UnitType(r.unit_type).name if r.unit_type in UnitType._value2member_map_
            else "",
            "buckets": {c.bucket_id: c.units for c in r.charges if c.bucket_id}}


def _event(e: events_pb2.Event) -> dict[str, Any]:
    return {"kind": events_pb2.EventKind.Name(e.kind), "time_ms": e.time_ms,
            "subscriber_id": e.subscriber_id, "bucket": e.bucket_id,
            "threshold": e.threshold_percent, "value": e.value, "limit": e.limit,
            "detail": e.detail}
