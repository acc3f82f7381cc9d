"""`tollgate lifecycle`: the process. Reads the partition event and usage streams through
consumer groups (shared with other lifecycle processes; a dead one's pending records are
claimed by the others), handles each event once in effect, runs the timers, sends the
queued messages and runs the campaigns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, cast

from tollgate.engine.billing.delivery import EVENTS, USAGE, Billing
from tollgate.engine.charging.engine import wall_clock_ms
from tollgate.engine.domain import EventKind, SubscriberState
from tollgate.engine.lifecycle import metrics, sends, signals
from tollgate.engine.lifecycle.campaigns import Campaigns
from tollgate.engine.lifecycle.channels import Channels, SendError
from tollgate.engine.lifecycle.notify import Notifier
from tollgate.engine.lifecycle.outbox import Outbox
from tollgate.engine.lifecycle.rules import event_values, matches
from tollgate.engine.lifecycle.sends import Sender
from tollgate.engine.lifecycle.settings import SEGMENT, Settings
from tollgate.engine.lifecycle.states import States, stream_order
from tollgate.engine.ops.config import Config
from tollgate.engine.ops.metrics import serve_metrics
from tollgate.engine.storage import keys
from tollgate.engine.storage.store import Store
from tollgate.engine.web import series
from tollgate.engine.web.aggregates import run_census
from tollgate.engine.web.auth import SelfLinks, Signer, load_secret
from tollgate.v1 import billing_pb2, events_pb2, usage_pb2

log = logging.getLogger("tollgate.lifecycle")

S = SubscriberState
REACTIVATE = (S.GRACE, S.SUSPENDED)


class Lifecycle:
    """One lifecycle process (several may run against one Redis)."""

    def __init__(self, config: Config, settings: Settings,
                 clock: Callable[[], int] = wall_clock_ms) -> None:
        if not config.redis_url:
            raise ValueError("the lifecycle needs the Redis that Tollgate uses (redis_url)")
        self.config = config
        self.settings = settings
        self.clock = clock
        self.store = Store(config.redis_url, config.partitions, config.redis_timeout_s)
        # Each partition reader (two per partition: events, usage) holds a connection while
        # it waits in Redis; the rest of the work needs a few more. (A cluster client has a
        # pool per node, unbounded by default.)
        pool = getattr(self.store.redis, "connection_pool", None)
        if pool is not None:
            pool.max_connections = max(pool.max_connections, 2 * config.partitions + 32)
        self.billing = Billing(self.store, config.replace(
            billing_redeliver_ms=int(settings.redeliver_s * 1000),
            billing_block_ms=max(1, int(settings.poll_s * 1000))))
        self.outbox = Outbox(self.store.redis, settings.log_kept)
        self.states = States(self.store)
        self.channels = Channels(settings)
        self.notifier = Notifier(self.store, self.outbox, settings)
        self.campaigns = Campaigns(self.notifier, settings.campaigns)
        self.sender = Sender(self.campaigns, {c.name: c for c in settings.campaigns},
                             int(settings.lease_s * 1000), clock)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()  # the loops' flag, the census's too (run_census)
        self._exits = contextlib.AsyncExitStack()

    async def start(self) -> Lifecycle:
        await self.store.init()
        self.notifier.links = SelfLinks(Signer(await load_secret(self.store.redis)),
                                        self.config.self_link_days,
                                        self.settings.self_link_url)
        await sends.publish(self.store.redis, self.settings.campaigns)
        # One reader per partition stream and feed: each reads its stream with its own
        # command (one cluster slot), and partitions are handled concurrently (an
        # account's events stay in order: they are all on its partition's stream).
        loops: list[Callable[[], Coroutine[Any, Any, None]]] = [
            *(partial(self._consume, EVENTS, p, self.handle_events)
              for p in range(self.config.partitions)),
            *(partial(self._consume, USAGE, p, self.handle_usage)
              for p in range(self.config.partitions)),
            lambda: self._every(self.settings.poll_s, self.run_timers),
            lambda: self._every(self.settings.poll_s, self.send_due),
            lambda: self._every(self.settings.poll_s, self.run_sends),
        ]
        if self.settings.census_s > 0:
            # The census that scores the base, here rather than next to charging (whichever
            # process takes the interval's lease does it).
            loops.append(lambda: run_census(self.store, self.settings.census_s, self._stopping))
        if any(c.signal != SEGMENT for c in self.settings.campaigns):
            loops.append(lambda: self._every(self.settings.campaign_interval_s,
                                             self.run_campaigns))
        self._tasks = [asyncio.create_task(loop()) for loop in loops]
        if self.config.dashboard_interval_s > 0:
            await self._exits.enter_async_context(
                series.shared(self.store.redis, self.config.dashboard_interval_s))
        log.info("lifecycle running", extra={"group": self.settings.group,
                                             "consumer": self.settings.consumer})
        return self

    async def stop(self) -> None:
        # The flag as well as the cancel: a cancellation that lands inside a Redis call can
        # surface as a connection error, which the loops would otherwise retry.
        self._stopping.set()
        self.billing.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.channels.close()
        await self._exits.aclose()
        await self.store.close()

    async def __aenter__(self) -> Lifecycle:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- loops ----------------------------------------------------------------------------

    async def _every(self, interval_s: float, work: Callable[[], Awaitable[int]]) -> None:
        """Runs work until cancelled; again at once while it finds something to do."""
        while not self._stopping.is_set():
            try:
                busy = await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("lifecycle step failed", extra={"step": work.__name__})
                busy = 0
            if not busy:
                await asyncio.sleep(interval_s)

    async def _consume(self, feed: int, partition: int,
                       handle: Callable[[list[tuple[str, bytes]]], Awaitable[None]]) -> None:
        """Handles and acknowledges each batch of one partition stream; a batch that fails
        stays unacknowledged and comes back after redeliver_s (its handling is
        idempotent)."""
        req = billing_pb2.StreamRequest(group=self.settings.group,
                                        consumer=self.settings.consumer,
                                        max_batch=self.settings.batch, partitions=[partition])
        while not self._stopping.is_set():
            try:
                async for batch in self.billing.deliver(feed, req):
                    if not batch:
                        continue
                    try:
                        await handle(batch)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        if self._stopping.is_set():
                            return
                        log.exception("lifecycle batch failed; it will be delivered again")
                        continue
                    await self.billing.ack(feed, self.settings.group, [r for r, _ in batch])
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("lifecycle stream read failed; retrying")
                await asyncio.sleep(self.settings.poll_s)

    # --- events ---------------------------------------------------------------------------

    async def handle_events(self, batch: list[tuple[str, bytes]]) -> None:
        for record_id, data in batch:
            await self.handle_event(events_pb2.Event.FromString(data), stream_order(record_id))

    async def handle_event(self, ev: events_pb2.Event, order: str) -> None:
        """One event: its state effects, then its rules' messages (once per rule and event).
        `order`: the event's place in its partition stream (stream_order)."""
        kind = EventKind(ev.kind) if ev.kind in EventKind._value2member_map_ else None
        if kind is None:
            return
        metrics.EVENTS_HANDLED.labels(kind.name).inc()
        redis = self.store.redis
        if ev.subscriber_id:
            await redis.sadd(keys.lc_account_subscribers(ev.account_id), ev.subscriber_id)
            targets = [ev.subscriber_id]
        else:  # account events (top-up, add-on): every subscriber on the account, seen
            # by the lifecycle or not yet (a new line that never used the service)
            seen = cast(set[bytes], await redis.smembers(
                keys.lc_account_subscribers(ev.account_id)))
            targets = await self.store.account_subscribers(ev.account_id,
                                                           (m.decode() for m in seen))
        await self._state_effects(kind, ev, targets, order)
        await self._signals(kind, ev, targets)
        now = self.clock()
        max_age = self.settings.max_event_age_s * 1000
        if max_age and ev.time_ms and now - ev.time_ms > max_age:
            return  # news no longer (a first start over a long history): no message
        values = event_values(ev)
        for rule in self.settings.rules:
            if matches(rule, ev):
                for sub in targets:
                    await self.notifier.notify(rule, ev.event_id, sub, ev.account_id,
                                               values, now, event=ev, critical=rule.critical,
                                               offer=rule.offer)

    async def _state_effects(self, kind: EventKind, ev: events_pb2.Event,
                             targets: list[str], order: str) -> None:
        if kind == EventKind.CREDIT_EXHAUSTED and ev.subscriber_id:
            await self._move(ev.subscriber_id, S.GRACE, (S.ACTIVE, S.PREACTIVE), ev, order)
        elif kind in (EventKind.TOPPED_UP, EventKind.ADD_ON_BOUGHT):
            for sub in targets:
                await self._move(sub, S.ACTIVE, REACTIVATE, ev, order)
                # A line that was ACTIVE already: the purchase extends the plan's validity.
                await self.states.schedule(sub, S.ACTIVE, ev.time_ms or self.clock())
        elif kind == EventKind.STATE_CHANGED and ev.detail in S.__members__:
            state = SubscriberState[ev.detail]
            await self.states.schedule(ev.subscriber_id, state, ev.time_ms or self.clock())
            if state == S.TERMINATED:
                await self.states.forfeit(ev.account_id, ev.subscriber_id, ev.time_ms)

    async def _signals(self, kind: EventKind, ev: events_pb2.Event, targets: list[str]) -> None:
        """The churn signals an event feeds (engine/lifecycle/signals.py)."""
        t = ev.time_ms or self.clock()
        redis = self.store.redis
        if kind in (EventKind.TOPPED_UP, EventKind.ADD_ON_BOUGHT):
            await signals.record_topup(redis, targets, t)
        elif kind == EventKind.CREDIT_EXHAUSTED and ev.subscriber_id:
            await signals.count_week(redis, ev.subscriber_id, signals.REFUSED, t)
        elif kind == EventKind.STATE_CHANGED and ev.detail in S.__members__ \
                and ev.subscriber_id:
            await signals.record_state(redis, ev.subscriber_id, SubscriberState[ev.detail], t)

    async def _move(self, sub: str, target: S, allowed: tuple[S, ...],
                    ev: events_pb2.Event, order: str) -> None:
        if await self.states.transition(sub, target, allowed, ev.event_id,
                                        ev.time_ms or self.clock(), order):
            metrics.TRANSITIONS.labels(target.name).inc()

    # --- usage: first use activates, last use feeds the inactivity campaigns ---------------

    async def handle_usage(self, batch: list[tuple[str, bytes]]) -> None:
        used: dict[str, signals.Use] = {}
        first: dict[str, str] = {}
        for record_id, data in batch:
            r = usage_pb2.RatedUsage.FromString(data)
            _count_record(r)
            if r.kind == usage_pb2.USAGE and r.subscriber_id:
                t = r.end_time_ms or r.start_time_ms
                u = used.setdefault(r.subscriber_id, signals.Use(r.account_id, t, t, {}))
                u.add(t, r.money_micros + r.units)
                first.setdefault(r.subscriber_id, stream_order(record_id))
        if not used:
            return
        await signals.record_usage(self.store.redis, used)
        subs = sorted(used)
        for sub, found in zip(subs, await self.store.read_subscribers(subs), strict=True):
            if found is not None and found[1] == S.PREACTIVE:
                u = used[sub]
                first_use = events_pb2.Event(event_id="first-use", account_id=u.account_id,
                                             subscriber_id=sub, time_ms=u.last_ms)
                await self._move(sub, S.ACTIVE, (S.PREACTIVE,), first_use, first[sub])

    # --- timers, sending, campaigns ----------------------------------------------------------

    async def run_timers(self) -> int:
        return await self.states.run_timers(self.clock(), int(self.settings.lease_s * 1000),
                                            self.settings.batch)

    async def send_due(self) -> int:
        """Sends the due messages (concurrently); returns how many were due."""
        msgs = await self.outbox.claim(self.clock(), int(self.settings.lease_s * 1000),
                                       self.settings.batch)
        await asyncio.gather(*(self._send(m) for m in msgs))
        return len(msgs)

    async def _send(self, msg: dict[str, object]) -> None:
        try:
            await self.channels.send(msg)
        except SendError as e:
            await self._failed(msg, str(e))
            return
        msg["attempts"] = int(str(msg["attempts"])) + 1
        if await self.outbox.settle("done", msg):
            metrics.NOTIFICATIONS.labels(msg["channel"], "sent").inc()
            await self.outbox.log(msg, "SENT", self.clock())

    async def _failed(self, msg: dict[str, object], error: str) -> None:
        attempts = int(str(msg["attempts"])) + 1
        msg["attempts"] = attempts
        now = self.clock()
        s = self.settings
        if attempts >= s.max_attempts:
            if await self.outbox.settle("dead", msg):
                metrics.NOTIFICATIONS.labels(msg["channel"], "dead").inc()
                log.warning("notification dead-lettered", extra={
                    "message_id": msg["id"], "attempts": attempts, "error": error})
                await self.outbox.log(msg, "DEAD", now, error)
            return
        delay_ms = int(min(s.retry_base_s * 2 ** (attempts - 1), s.retry_max_s) * 1000)
        msg["due_ms"] = now + delay_ms
        if await self.outbox.settle("retry", msg, now + delay_ms):
            metrics.NOTIFICATIONS.labels(msg["channel"], "failed").inc()
            await self.outbox.log(msg, "RETRYING", now, error)

    async def run_sends(self) -> int:
        """A segment send an operator asked for on the web segments page, if one waits."""
        return await self.sender.run(self.clock())

    async def run_campaigns(self) -> int:
        """One pass per interval across all lifecycle processes: the first to take the
        interval's lease scans (messages are de-duplicated anyway; this saves the scans)."""
        lease_ms = max(1, int(self.settings.campaign_interval_s * 1000))
        if await self.store.redis.set(keys.LC_CAMPAIGN_LEASE, self.settings.consumer,
                                      nx=True, px=lease_ms):
            await self.campaigns.run(self.clock())
        return 0  # one pass per interval, however much it found



def _count_record(r: usage_pb2.RatedUsage) -> None:
    """Feeds the dashboard's money and top-up counters (engine/web/series.py)."""
    kind = usage_pb2.RecordKind.Name(r.kind).lower() if r.kind in usage_pb2.RecordKind.values() \
        else str(r.kind)
    metrics.RECORDS.labels(kind).inc()
    if r.money_micros:
        metrics.MONEY.labels(kind).inc(abs(r.money_micros))


async def run_lifecycle(config: Config, settings: Settings) -> None:
    """Runs a lifecycle process until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Lifecycle(config, settings):
        print(f"lifecycle running (group {settings.group}, consumer {settings.consumer})",
              flush=True)
        serve_metrics(settings.metrics_port, config.metrics_bind_host)
        await stop.wait()
