"""One ordering rule for a subscriber's state (engine/storage/lua/lib_order.lua): an event handled
late or again, by a lagging group or after a crash, never undoes a later decision, provisioning's
included. Real Redis and a real Tollgate; the property test hands the lifecycle a line's
events itself, in any order, as often as it likes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TypeVar

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import EUR, Gateway, sample_plan
from tests.integration.receivers import eventually
from tests.live import Live
from tollgate.engine.domain import SubscriberState
from tollgate.engine.lifecycle.process import Lifecycle
from tollgate.engine.lifecycle.settings import Settings, parse_settings
from tollgate.engine.lifecycle.states import stream_order
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.server import Tollgate
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import events_pb2
from tollgate.v1 import provisioning_pb2 as ppb

T = TypeVar("T")
S = SubscriberState
PARTITIONS = 8
LIFECYCLE = {"group": "lifecycle", "consumer": "test", "poll_s": 0.02, "lease_s": 5.0,
             "redeliver_s": 1.0, "metrics_port": 0}
ids = itertools.count()


async def test_a_second_group_rereading_an_old_top_up_leaves_a_later_suspension(
        config: Config):
    config = config.replace(subscriber_cache_s=0.0)
    async with Tollgate(config) as app, grpc.aio.insecure_channel(app.address) as channel:
        gw = Gateway(channel)
        [sub] = await gw.setup()
        state = ppb.Subscriber(subscriber_id=sub, state=com.GRACE)
        await gw.provisioning.SetSubscriberState(state)  # the lifecycle learns the line
        async with Lifecycle(config, parse_settings(LIFECYCLE)) as lc:
            await gw.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="acct-0",
                                                         amount_micros=EUR))
            await eventually(lambda: _is(gw, sub, com.ACTIVE), what="ACTIVE")
            await _handled(lc, "lifecycle", config)
        # Later, provisioning suspends the line; then another group reads the stream from
        # its start, the top-up included.
        state.state = com.SUSPENDED
        await gw.provisioning.SetSubscriberState(state)
        async with Lifecycle(config, parse_settings({**LIFECYCLE, "group": "audit"})) as lc:
            await _handled(lc, "audit", config)
        assert await _state(gw, sub) == com.SUSPENDED


async def _state(gw: Gateway, sub: str) -> int:
    return (await gw.provisioning.GetSubscriber(
        ppb.GetSubscriberRequest(subscriber_id=sub))).state


async def _is(gw: Gateway, sub: str, state: int) -> bool:
    return await _state(gw, sub) == state


async def _handled(lc: Lifecycle, group: str, config: Config) -> None:
    """Waits until the group has read and acknowledged every event."""
    async def done() -> bool:
        for p in range(config.partitions):
            groups = {g["name"].decode(): g
                      for g in await lc.store.redis.xinfo_groups(keys.events_stream(p))}
            if group not in groups or groups[group]["pending"] or groups[group]["lag"]:
                return False
        return True
    await eventually(done, what=f"group {group} done")


# --- the property -----------------------------------------------------------------------------


class LiveWithLifecycle(Live):
    """A Tollgate and an idle lifecycle (no loops: the test hands it the events)."""

    def __init__(self, config: Config, settings: Settings) -> None:
        super().__init__(config)
        self.lc = Lifecycle(config, settings)
        self.run(self.gw.provisioning.PutPlan, sample_plan())

    def close(self) -> None:
        self.run(self.lc.store.close)
        super().close()


@pytest.fixture(scope="module")
def live(redis_server: RedisServer) -> Iterator[LiveWithLifecycle]:
    config = Config(listen="127.0.0.1:0", redis_url=redis_server.url, partitions=PARTITIONS,
                    batch_window_ms=0.5, log_format="text", metrics_port=0,
                    subscriber_cache_s=0)
    server = LiveWithLifecycle(config, parse_settings(LIFECYCLE))
    yield server
    server.close()


class Line:
    """One account with one line; its events as the lifecycle would read them."""

    def __init__(self, live: LiveWithLifecycle, start: S) -> None:
        n = next(ids)
        self.live, self.account, self.sub = live, f"order-{n}", f"order-sub-{n}"
        self.topups = 0
        live.run(live.gw.provisioning.CreateAccount, ppb.CreateAccountRequest(
            account_id=self.account, plan_id=sample_plan().plan_id, initial_money_micros=EUR))
        live.run(live.gw.provisioning.CreateSubscriber, ppb.Subscriber(
            subscriber_id=self.sub, account_id=self.account, state=int(start)))

    def provision(self, state: S) -> None:
        self.live.run(self.live.gw.provisioning.SetSubscriberState,
                      ppb.Subscriber(subscriber_id=self.sub, state=int(state)))

    def top_up(self) -> None:
        self.topups += 1
        self.live.run(self.live.gw.provisioning.TopUp, ppb.TopUpRequest(
            topup_id=f"t{self.topups}", account_id=self.account, amount_micros=EUR))

    def events(self) -> list[tuple[str, events_pb2.Event]]:
        """The line's events so far, in stream order: (record order, event)."""
        p = keys.partition_of(self.account, PARTITIONS)
        rows = self.live.run(self.live.lc.store.redis.xrange, keys.events_stream(p))
        found = [(stream_order(f"{p}-{rid.decode()}"), events_pb2.Event.FromString(f[b"e"]))
                 for rid, f in rows]
        return [(order, ev) for order, ev in found if ev.account_id == self.account]

    def handle(self, event: tuple[str, events_pb2.Event]) -> None:
        order, ev = event
        self.live.run(self.live.lc.handle_event, ev, order)

    def state(self) -> S:
        found = self.live.run(self.live.gw.provisioning.GetSubscriber,
                              ppb.GetSubscriberRequest(subscriber_id=self.sub))
        return S(found.state)


def decided(start: S, steps: list[S | None]) -> S:
    """The state the decisions give taken once each, in the order they were made: provisioning
    sets a state; a top-up (None) returns GRACE and SUSPENDED to ACTIVE."""
    state = start
    for step in steps:
        if step is not None:
            state = step
        elif state in (S.GRACE, S.SUSPENDED):
            state = S.ACTIVE
    return state


STATES = st.sampled_from([S.PREACTIVE, S.ACTIVE, S.GRACE, S.SUSPENDED])
SETTINGS = settings(max_examples=50, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(start=STATES, steps=st.lists(st.none() | STATES, min_size=1, max_size=6),
       data=st.data())
def test_events_handled_in_any_order_and_again_end_in_the_latest_decision(
        live, start, steps, data):
    line = Line(live, start)
    for step in steps:
        if step is None:
            line.top_up()
        else:
            line.provision(step)
        # Meanwhile the lifecycle handles any of the events so far, in any order, some again
        # (a redelivery, a second group).
        so_far = line.events()
        for event in data.draw(st.lists(st.sampled_from(so_far), max_size=4)) if so_far else []:
            line.handle(event)
    # In the end every event has been handled at least once, in any order.
    every = line.events()
    for event in data.draw(st.permutations(every)):
        line.handle(event)
    assert line.state() == decided(start, steps)
