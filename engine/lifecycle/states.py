"""Subscriber state transitions made by the lifecycle: compare-and-set on the subscriber, the
STATE_CHANGED event written once per trigger, timed transitions on a Redis sorted set, and the
forfeit of an account's balances at termination (a FORFEIT usage record).

PREACTIVE -> ACTIVE on first usage; ACTIVE -> GRACE when credit is exhausted or the plan
expires (validity_days after activation or the last top-up / add-on); GRACE ->
SUSPENDED after the plan's grace_days; SUSPENDED -> TERMINATED after its retention_days; a
top-up or add-on returns GRACE / SUSPENDED to ACTIVE.
"""

from __future__ import annotations

import logging
from typing import cast

from tollgate.engine.domain import EventKind, SubscriberState
from tollgate.engine.errors import NotFound
from tollgate.engine.lifecycle.outbox import DAY_MS, Schedule, script
from tollgate.engine.storage import keys
from tollgate.engine.storage.store import Store, state_order
from tollgate.engine.storage.writes import AccountWrite
from tollgate.v1 import events_pb2, usage_pb2

log = logging.getLogger("tollgate.lifecycle")

S = SubscriberState
TIMED = {S.ACTIVE: S.GRACE, S.GRACE: S.SUSPENDED, S.SUSPENDED: S.TERMINATED}
"""The state a timer leaves from -> the state it moves to."""
TIMER_DATA = "tg:{lc}:timer-due"
"""Hash: timer member -> its due time (the stable part of the transition's event id)."""
EVENT_MARKER_TTL_MS = 90 * DAY_MS
FORFEIT_RETRIES = 20


def stream_order(record_id: str) -> str:
    """The place (state_order) of the record "<partition>-<place>" (the events of one
    account are on one partition stream, in order)."""
    return state_order(record_id.split("-", 1)[1])


def timer_member(subscriber_id: str, target: SubscriberState) -> str:
    return f"{subscriber_id}|{target.name}"


class States:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis
        self.timers = Schedule(self.redis, keys.LC_TIMERS, TIMER_DATA)
        self._transition = script(self.redis, "lc_transition")
        self._emit_once = script(self.redis, "lc_emit_once")

    async def transition(self, subscriber_id: str, target: SubscriberState,
                         allowed: tuple[SubscriberState, ...], trigger: str,
                         time_ms: int, order: str = "") -> bool:
        """Moves the subscriber to target if it is in an allowed state and `order` (see
        stream_order; "" = none) is not older than its last ordered change. Safe to repeat:
        when it is in target already, the STATE_CHANGED event of this trigger is written if
        it was not (a crash between the two steps), and a termination's forfeit completed."""
        reply = await self._transition(
            keys=[keys.subscriber(subscriber_id)],
            args=[int(target), trigger, order, *(int(s) for s in allowed)])
        changed, before, account, repeated = (int(reply[0]), int(reply[1]), reply[2],
                                              int(reply[3]))
        if not changed and not repeated:
            return False
        account_id = account.decode()
        p = self.store.partition(account_id)
        event_id = f"state:{subscriber_id}:{target.name}:{trigger}"
        event = events_pb2.Event(event_id=event_id, kind=int(EventKind.STATE_CHANGED),
                                 account_id=account_id, subscriber_id=subscriber_id,
                                 time_ms=time_ms, detail=target.name).SerializeToString()
        if target == S.TERMINATED:
            await self.forfeit(account_id, subscriber_id, time_ms)
        await self._emit_once(keys=[keys.event_marker(p, event_id), keys.events_stream(p)],
                              args=[EVENT_MARKER_TTL_MS, event])
        if changed:
            await self.redis.publish(keys.SUBSCRIBER_CHANGES, subscriber_id)
            log.info("subscriber state changed", extra={
                "subscriber": subscriber_id, "from": S(before).name, "to": target.name,
                "trigger": trigger})
        return bool(changed)

    # --- timers ---------------------------------------------------------------------------

    async def schedule(self, subscriber_id: str, state: SubscriberState, since_ms: int) -> None:
        """Sets or clears the timers that follow entering `state` at since_ms, if the
        subscriber is in that state now (a late, redelivered change is ignored)."""
        try:
            _, now_state = await self.store.get_subscriber(subscriber_id)
        except NotFound:
            return
        if now_state != state:
            return
        pipe = self.redis.pipeline(transaction=True)
        for target in TIMED.values():
            member = timer_member(subscriber_id, target)
            pipe.zrem(keys.LC_TIMERS, member)
            pipe.hdel(TIMER_DATA, member)
        then = TIMED.get(state)
        if then is not None:
            days = await self._period_days(subscriber_id, state)
            if days:
                member = timer_member(subscriber_id, then)
                due = since_ms + days * DAY_MS
                if state == S.ACTIVE:  # validity only grows: a redelivered old purchase
                    due = max(due, int(await self.redis.hget(TIMER_DATA, member) or 0))
                pipe.zadd(keys.LC_TIMERS, {member: due})
                pipe.hset(TIMER_DATA, member, due)
        await pipe.execute()

    async def _period_days(self, subscriber_id: str, state: SubscriberState) -> int:
        try:
            account_id, _ = await self.store.get_subscriber(subscriber_id)
            plan = await self.store.get_plan(await self.store.account_plan(account_id))
        except NotFound:
            return 0
        return {S.ACTIVE: plan.validity_days, S.GRACE: plan.grace_days,
                S.SUSPENDED: plan.retention_days}.get(state, 0)

    async def run_timers(self, now_ms: int, lease_ms: int, count: int) -> int:
        """Carries out the due timed transitions; returns how many were due."""
        due = await self.timers.claim(now_ms, lease_ms, count)
        for member, payload in due:
            subscriber_id, _, target_name = member.rpartition("|")
            target = SubscriberState[target_name]
            since = next(s for s, t in TIMED.items() if t == target)
            due_ms = int(payload or now_ms)
            await self.transition(subscriber_id, target, (since,), f"timer:{due_ms}", due_ms)
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(keys.LC_TIMERS, member)
            pipe.hdel(TIMER_DATA, member)
            await pipe.execute()
        return len(due)

    async def due_timers(self) -> dict[str, int]:
        """Every pending timer and when it is due (for tools and tests)."""
        rows = cast(list[tuple[bytes, float]],
                    await self.redis.zrange(keys.LC_TIMERS, 0, -1, withscores=True))
        return {m.decode(): int(score) for m, score in rows}

    # --- termination ----------------------------------------------------------------------

    async def forfeit(self, account_id: str, subscriber_id: str, time_ms: int) -> bool:
        """Takes the account's free money and bucket units with a FORFEIT record, atomically
        with the balances (the charging apply). A shared account with other members keeps
        its balances. Returns whether anything was forfeited."""
        for _ in range(FORFEIT_RETRIES):
            try:
                acct, _ = await self.store.get_account(account_id)
            except NotFound:
                return False
            if set(acct.members) - {subscriber_id}:
                return False
            money = max(acct.money, 0)
            charges = [usage_pb2.BalanceCharge(micros=money)] if money else []
            sets: dict[str, int] = {}
            for b in acct.buckets:
                if b.remaining > 0:
                    charges.append(usage_pb2.BalanceCharge(bucket_id=b.bucket_id,
                                                           units=b.remaining))
                    sets[f"b:{b.bucket_id}:rem"] = 0
            if not charges:
                return False
            record = usage_pb2.RatedUsage(
                kind=usage_pb2.FORFEIT, account_id=account_id, subscriber_id=subscriber_id,
                start_time_ms=time_ms, end_time_ms=time_ms, plan_id=acct.plan_id,
                money_micros=money, charges=charges, origin="lifecycle")
            buckets = len(sets)
            if money:
                sets["money"] = acct.money - money  # set on the version read, like the rest
            write = AccountWrite(keys.account(acct.partition, account_id), acct.version, sets,
                                 records=[record.SerializeToString()])
            conflicts = await self.store.apply({acct.partition: [write]}, 0)
            if not conflicts[acct.partition]:
                log.info("balances forfeited", extra={"account": account_id,
                                                       "money": money, "buckets": buckets})
                return True
        raise RuntimeError(f"forfeit of account {account_id!r}: it kept changing")
