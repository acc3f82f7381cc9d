"""Billing over real gRPC and a real Redis: consumer-group delivery of rated usage and events,
acknowledgement, redelivery of a dead consumer's records, GetUsage paging, and trimming."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.helpers import EUR, SMS_RG, Gateway, mscc, past_retention, request
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys, record_block
from tollgate.engine.storage.redis_client import connect_async
from tollgate.server import Tollgate
from tollgate.v1 import billing_pb2 as bpb
from tollgate.v1 import billing_pb2_grpc, usage_pb2
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb

REDELIVER_MS = 400
_sessions = itertools.count()


@pytest.fixture
def config(redis_url: str) -> Config:
    return Config(listen="127.0.0.1:0", redis_url=redis_url, partitions=8,
                  batch_window_ms=0.5, log_format="text", metrics_port=0,
                  billing_redeliver_ms=REDELIVER_MS, billing_block_ms=50,
                  stream_trim_interval_s=0)


@pytest.fixture
def billing(gateway: Gateway) -> billing_pb2_grpc.BillingStub:
    return billing_pb2_grpc.BillingStub(gateway.channel)


@pytest.fixture
async def db(redis_url: str) -> Any:
    client = connect_async(redis_url)
    yield client
    await client.aclose()


async def sms(gateway: Gateway, subs: list[str], n: int) -> None:
    """n one-shot SMS events spread over the subscribers: one USAGE record each."""
    reqs = [request(f"sms-{next(_sessions)}", 0, cpb.EVENT, subs[i % len(subs)],
                    mscc(SMS_RG, used=1, field="service_units")) for i in range(n)]
    answers = await gateway.batch(reqs)
    assert all(a.result == cpb.SUCCESS for a in answers)


async def stream_ids(db: Any, config: Config, feed: str = "usage") -> dict[str, bytes]:
    """Ground truth: every record id on the partition streams -> its payload."""
    out = {}
    for p in range(config.partitions):
        key = keys.usage_stream(p) if feed == "usage" else keys.events_stream(p)
        for sid, fields in await db.xrange(key):
            if feed == "usage":
                out.update((f"{p}-{place}", r) for place, r in record_block.records(sid, fields))
            else:
                out[f"{p}-{sid.decode()}"] = fields[b"e"]
    return out


class Consumer:
    """One billing consumer: a StreamRatedUsage (or StreamEvents) call read in the background;
    with auto_ack it acknowledges every batch as soon as it arrives."""

    def __init__(self, stub: billing_pb2_grpc.BillingStub, group: str, name: str, *,
                 events: bool = False, auto_ack: bool = False, max_batch: int = 0,
                 **start: Any) -> None:
        """`start`: start_record_id or start_time_ms, for a group created by this call."""
        self.stub, self.group, self.events, self.auto_ack = stub, group, events, auto_ack
        req = bpb.StreamRequest(group=group, consumer=name, block_ms=50, max_batch=max_batch,
                                **start)
        self.call = stub.StreamEvents(req) if events else stub.StreamRatedUsage(req)
        self.ids: list[str] = []
        self.items: list[Any] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                async for batch in self.call:
                    got = list(batch.events if self.events else batch.records)
                    ids = [x.record_id for x in got]
                    self.items += got
                    self.ids += ids
                    if self.auto_ack:
                        await self.ack(ids)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    raise

    async def ack(self, ids: list[str]) -> int:
        feed = bpb.FEED_EVENTS if self.events else bpb.FEED_USAGE
        answer = await self.stub.Ack(bpb.AckRequest(group=self.group, record_ids=ids, feed=feed))
        return answer.acked

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        async def enough() -> None:
            while len(self.ids) < n:
                if self.task.done():
                    self.task.result()
                    raise AssertionError("stream ended")
                await asyncio.sleep(0.01)
        await asyncio.wait_for(enough(), timeout)

    async def kill(self) -> None:
        """Cancels the call without acknowledging anything (a consumer that died)."""
        self.call.cancel()
        await self.task


async def test_records_arrive_and_ack_stops_redelivery(gateway, billing, db, config):
    subs = await gateway.setup(accounts=4)
    await sms(gateway, subs, 20)
    truth = await stream_ids(db, config)
    assert len(truth) >= 20

    c = Consumer(billing, "bill", "c1")
    await c.wait_for(len(truth))
    assert sorted(c.ids) == sorted(truth)
    for rec in c.items:
        assert usage_pb2.RatedUsage.FromString(truth[rec.record_id]).account_id == rec.account_id
    assert {r.kind for r in c.items} >= {usage_pb2.USAGE}
    assert await c.ack(c.ids) == len(truth)
    assert await c.ack(c.ids) == 0  # acknowledging twice is harmless
    await c.kill()

    again = Consumer(billing, "bill", "c1")
    await asyncio.sleep(3 * REDELIVER_MS / 1000)
    await sms(gateway, subs, 2)
    await again.wait_for(2)
    await asyncio.sleep(0.2)
    assert len(again.ids) == 2 and not set(again.ids) & set(truth)
    await again.kill()


async def test_killed_consumer_restarts_and_loses_nothing(gateway, billing, db, config):
    subs = await gateway.setup(accounts=3)
    await sms(gateway, subs, 30)
    truth = await stream_ids(db, config)

    first = Consumer(billing, "bill", "worker", max_batch=7)
    await first.wait_for(len(truth))
    acked = first.ids[: len(first.ids) // 2]
    assert await first.ack(acked) == len(acked)
    await first.kill()  # dies with half its records unacknowledged
    unacked = set(first.ids) - set(acked)

    await sms(gateway, subs, 5)  # written while no consumer runs
    later = set(await stream_ids(db, config)) - set(truth)

    restarted = Consumer(billing, "bill", "worker", auto_ack=True)
    await restarted.wait_for(len(unacked) + len(later))
    await asyncio.sleep(3 * REDELIVER_MS / 1000)
    seen = restarted.ids
    assert len(seen) == len(set(seen)), "a record came twice to the restarted consumer"
    assert set(seen) == unacked | later  # nothing lost, only the unacknowledged again
    await restarted.kill()

    # Another consumer name in the group claims a dead consumer's records after the timeout.
    other = Consumer(billing, "bill", "victim")
    await sms(gateway, subs, 4)
    await other.wait_for(4)
    await other.kill()
    heir = Consumer(billing, "bill", "heir", auto_ack=True)
    await heir.wait_for(4, timeout=5 * REDELIVER_MS / 1000 + 5)
    assert set(heir.ids) == set(other.ids)
    await heir.kill()


async def test_two_live_consumers_never_get_the_same_record(gateway, billing, db, config):
    subs = await gateway.setup(accounts=8)
    a = Consumer(billing, "bill", "a", auto_ack=True, max_batch=5)
    b = Consumer(billing, "bill", "b", auto_ack=True, max_batch=5)
    for _ in range(10):
        await sms(gateway, subs, 16)
        await asyncio.sleep(0.01)
    truth = await stream_ids(db, config)
    await asyncio.wait_for(_until(lambda: len(a.ids) + len(b.ids) >= len(truth)), 10)
    await asyncio.sleep(2 * REDELIVER_MS / 1000)
    assert not set(a.ids) & set(b.ids)
    assert len(a.ids) + len(b.ids) == len(truth)
    assert set(a.ids) | set(b.ids) == set(truth)
    await a.kill()
    await b.kill()

    # Without acknowledging, while both live and within the timeout: still disjoint.
    c = Consumer(billing, "g2", "c")
    d = Consumer(billing, "g2", "d")
    await asyncio.wait_for(_until(lambda: len(c.ids) + len(d.ids) >= len(truth)), 10)
    assert not set(c.ids) & set(d.ids)
    assert set(c.ids) | set(d.ids) == set(truth)
    await c.kill()
    await d.kill()


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.01)


async def test_get_usage_pages_and_totals(gateway, billing, db, config):
    subs = await gateway.setup(accounts=3, subscribers_per_account=2)
    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="acct-1",
                                                      amount_micros=2 * EUR))
    await sms(gateway, subs, 42)
    truth = {rid: usage_pb2.RatedUsage.FromString(data)
             for rid, data in (await stream_ids(db, config)).items()}
    mine = sorted((rid for rid, r in truth.items() if r.account_id == "acct-1"),
                  key=lambda rid: tuple(int(x) for x in rid.split("-")[1:]))
    assert len(mine) >= 15

    pages, token = [], ""
    while True:
        answer = await billing.GetUsage(bpb.GetUsageRequest(
            account_id="acct-1", from_ms=0, page_size=4, page_token=token))
        pages.append(answer)
        token = answer.next_page_token
        if not token:
            break
    got = [r.record_id for p in pages for r in p.records]
    assert got == mine
    assert all(len(p.records) <= 4 for p in pages)
    totals = pages[-1].totals
    assert totals.records == len(mine)
    assert totals.money_micros == sum(truth[r].money_micros for r in mine)
    units = {u.unit_type: u.units for u in totals.units}
    expected: dict[int, int] = {}
    for rid in mine:
        r = truth[rid]
        if r.units:
            expected[r.unit_type] = expected.get(r.unit_type, 0) + r.units
    assert units == expected
    kinds = {k.kind: (k.records, k.money_micros) for k in totals.by_kind}
    assert kinds[usage_pb2.TOP_UP] == (1, -2 * EUR)
    assert sum(n for n, _ in kinds.values()) == len(mine)

    # A period: [from, to) by stream time.
    cut = mine[len(mine) // 2]
    cut_ms = int(cut.split("-")[1])
    answer = await billing.GetUsage(bpb.GetUsageRequest(account_id="acct-1", from_ms=1,
                                                        to_ms=cut_ms, page_size=1000))
    assert [r.record_id for r in answer.records] == [
        r for r in mine if int(r.split("-")[1]) < cut_ms]
    assert answer.next_page_token == ""

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await billing.GetUsage(bpb.GetUsageRequest(account_id="acct-2", page_size=4,
                                                   page_token=pages[0].next_page_token))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_events(gateway, billing, db, config):
    await gateway.setup(accounts=2)
    for i in range(3):
        await gateway.provisioning.TopUp(ppb.TopUpRequest(
            topup_id=f"t{i}", account_id=f"acct-{i % 2}", amount_micros=EUR))
    truth = await stream_ids(db, config, "events")
    assert len(truth) >= 3

    c = Consumer(billing, "crm", "c1", events=True)
    await c.wait_for(len(truth))
    assert sorted(c.ids) == sorted(truth)
    assert sum(e.event.kind == 7 for e in c.items) == 3  # TOPPED_UP
    half = c.ids[: len(c.ids) // 2]
    assert await c.ack(half) == len(half)
    await c.kill()

    again = Consumer(billing, "crm", "c2", events=True, auto_ack=True)
    await again.wait_for(len(truth) - len(half))
    await asyncio.sleep(2 * REDELIVER_MS / 1000)
    assert set(again.ids) == set(truth) - set(half)
    await again.kill()


async def test_invalid_requests_are_refused(billing):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in billing.StreamRatedUsage(bpb.StreamRequest(consumer="x")):
            pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await billing.Ack(bpb.AckRequest(group="g", record_ids=["nonsense"]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method", ["GetUsage", "Ack", "StreamRatedUsage", "StreamEvents"])
async def test_unreadable_request_bytes_are_refused_with_invalid_argument(gateway, method):
    path = f"/tollgate.v1.Billing/{method}"
    if method.startswith("Stream"):
        call: Any = gateway.channel.unary_stream(path, request_serializer=bytes,
                                                 response_deserializer=bytes)
    else:
        call = gateway.channel.unary_unary(path, request_serializer=bytes,
                                           response_deserializer=bytes)

    with pytest.raises(grpc.aio.AioRpcError) as e:
        reply = call(b"\xff\xff\xff\xff")
        if method.startswith("Stream"):
            async for _ in reply:
                pass
        else:
            await reply

    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    assert "cannot read" in (e.value.details() or "")


def sid_of(rid: str) -> record_block.Position:
    """A record's place in its partition: (ms, seq) of its entry, its index in a block."""
    return record_block.position(rid.split("-", 1)[1])


async def test_a_group_registered_after_another_acknowledged_everything_gets_every_record(
        gateway, billing, db, config, tollgate):
    subs = await gateway.setup(accounts=4)
    await sms(gateway, subs, 165)
    truth = await stream_ids(db, config)
    first = Consumer(billing, "lifecycle", "lc1", auto_ack=True)
    await first.wait_for(len(truth))
    await first.kill()

    report = await tollgate.billing.trim()  # within the retention: nothing goes
    late = Consumer(billing, "billing-late", "b1")
    await late.wait_for(len(truth))

    assert len(truth) >= 165 and report.trimmed == 0
    assert sorted(late.ids) == sorted(truth)
    await late.kill()


async def test_a_new_group_starts_at_a_record_or_a_time(gateway, billing, db, config):
    subs = await gateway.setup(accounts=4)
    await sms(gateway, subs, 30)
    truth = sorted(await stream_ids(db, config), key=sid_of)
    # Within a block (not its first record): the records before it are not delivered.
    middle = next(r for r in truth[len(truth) // 2:] + truth if sid_of(r)[2] > 0)
    p = middle.split("-")[0]

    by_record = Consumer(billing, "from-record", "r1", start_record_id=middle)
    by_time = Consumer(billing, "from-time", "t1", start_time_ms=sid_of(middle)[0])
    want_record = [r for r in truth if sid_of(r) >= (sid_of(middle) if r.split("-")[0] == p
                                                     else (sid_of(middle)[0], 0, 0))]
    want_time = [r for r in truth if sid_of(r)[0] >= sid_of(middle)[0]]
    await by_record.wait_for(len(want_record))
    await by_time.wait_for(len(want_time))
    await asyncio.sleep(0.2)  # nothing older follows

    assert middle in want_record and sorted(by_record.ids) == sorted(want_record)
    assert sorted(by_time.ids) == sorted(want_time)
    for c in (by_record, by_time):
        await c.kill()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in billing.StreamRatedUsage(bpb.StreamRequest(
                group="both", consumer="x", start_record_id=middle, start_time_ms=1)):
            pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_trimmer_keeps_unacked_and_trims_acked_past_retention(gateway, billing, db,
                                                                    config, tollgate):
    subs = await gateway.setup(accounts=4)
    for _ in range(4):  # a block per partition and batch: several entries per partition
        await sms(gateway, subs, 10)
    app: Tollgate = tollgate
    assert app.billing is not None
    before = await stream_ids(db, config)
    assert (await app.billing.trim(past_retention(config))).trimmed == 0  # no group

    c = Consumer(billing, "bill", "c1")
    await c.wait_for(len(before))
    order = sorted(c.ids, key=sid_of)
    # Ack everything except one record per partition in the middle of the stream.
    keep: dict[str, str] = {}
    for rid in order:
        p = rid.split("-")[0]
        per_p = [r for r in order if r.split("-")[0] == p]
        keep.setdefault(p, per_p[len(per_p) // 2])
    await c.ack([r for r in order if r not in keep.values()])

    assert (await app.billing.trim()).trimmed == 0  # acknowledged, but within the retention
    report = await app.billing.trim(past_retention(config))
    after = await stream_ids(db, config)
    assert set(keep.values()) <= set(after)  # unacknowledged records stay
    for p, held in keep.items():
        for rid in before:
            if rid.split("-")[0] == p:
                # Redis trims whole entries: a block stays while one of its records is held.
                assert (rid in after) == (sid_of(rid)[:2] >= sid_of(held)[:2]), rid
    assert report.trimmed == len(before) - len(after) > 0
    assert report.dropped_unacked == 0
    await c.kill()


async def test_a_group_behind_the_retention_is_warned_about_and_its_records_kept(
        gateway, billing, db, config, tollgate, caplog):
    subs = await gateway.setup(accounts=4)
    await sms(gateway, subs, 40)
    before = await stream_ids(db, config)
    done = Consumer(billing, "bill", "c1", auto_ack=True)
    await done.wait_for(len(before))
    lazy = Consumer(billing, "lazy", "l1", max_batch=1)
    await lazy.wait_for(1)
    await lazy.kill()  # one record pending, the rest never delivered
    metric = ("tollgate_usage_unacked_past_retention", {"group": "lazy"})

    with caplog.at_level("WARNING", logger="tollgate.billing"):
        report = await tollgate.billing.trim(past_retention(config))

    assert report.trimmed == 0
    assert await stream_ids(db, config) == before
    assert REGISTRY.get_sample_value(*metric) == len(before)
    assert REGISTRY.get_sample_value(
        "tollgate_usage_unacked_past_retention", {"group": "bill"}) == 0
    warned = [r for r in caplog.records if getattr(r, "group", None) == "lazy"]
    assert [getattr(r, "records", None) for r in warned] == [len(before)]
    await done.kill()


async def test_events_past_max_age_go_even_unacknowledged_and_are_counted(
        gateway, billing, db, config, tollgate):
    subs = await gateway.setup(accounts=4)
    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="t", account_id="acct-0",
                                                      amount_micros=EUR))
    await sms(gateway, subs, 4)
    events = await stream_ids(db, config, "events")
    lazy = Consumer(billing, "lazy", "l1", events=True, max_batch=1)
    await lazy.wait_for(1)
    await lazy.kill()
    metric = ("tollgate_usage_dropped_unacked_total", {"feed": "events"})
    counted = REGISTRY.get_sample_value(*metric) or 0.0

    report = await tollgate.billing.trim(now_ms=10**13 + config.stream_max_age_s * 1000)

    assert len(events) > 0 and report.dropped_unacked == len(events)
    assert await stream_ids(db, config, "events") == {}
    assert REGISTRY.get_sample_value(*metric) == counted + len(events)


async def test_open_stream_does_not_hold_up_shutdown(config):
    app = await Tollgate(config.replace(shutdown_grace_s=30)).start()
    channel = grpc.aio.insecure_channel(app.address)
    try:
        c = Consumer(billing_pb2_grpc.BillingStub(channel), "bill", "c1")
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await app.stop()
        assert loop.time() - started < 5
        await asyncio.wait_for(c.task, 5)  # the stream ended (OK), not cut off
    finally:
        await channel.close()


async def test_a_block_half_acknowledged_comes_back_with_only_its_other_records(
        gateway, billing, db, config):
    """The records of one batch of a partition are one stream entry (a block): a consumer
    that acknowledged some of them gets only the others again, and the entry is
    acknowledged in Redis once its last record is."""
    subs = await gateway.setup(accounts=1, subscribers_per_account=4)
    await sms(gateway, subs, 9)  # one batch: one block on the account's partition
    truth = await stream_ids(db, config)
    p = keys.partition_of("acct-0", config.partitions)
    [(entry, _)] = await db.xrange(keys.usage_stream(p))
    assert sorted(truth, key=sid_of) == [f"{p}-{entry.decode()}-{i}" for i in range(9)]

    first = Consumer(billing, "bill", "c1")
    await first.wait_for(9)
    acked = first.ids[::2]
    assert await first.ack(acked) == 5
    assert await first.ack(acked) == 0  # twice is harmless
    assert await first.ack([f"{p}-{entry.decode()}-9"]) == 0  # no such record
    await first.kill()

    again = Consumer(billing, "bill", "c1")
    await again.wait_for(4, timeout=5 * REDELIVER_MS / 1000 + 5)
    await asyncio.sleep(3 * REDELIVER_MS / 1000)  # (unacknowledged, they keep coming)
    assert set(again.ids) == set(truth) - set(acked)
    assert await again.ack(sorted(set(again.ids))) == 4
    assert (await db.xpending(keys.usage_stream(p), "bill"))["pending"] == 0
    assert not await db.exists(keys.acked(keys.usage_stream(p), "bill"))
    await again.kill()


async def test_records_of_single_record_entries_are_delivered_beside_blocks(
        gateway, billing, db, config):
    """Entries of one record each (field `r`: top-ups, entries of earlier releases) and
    blocks are delivered and acknowledged alike."""
    subs = await gateway.setup(accounts=1, subscribers_per_account=2)
    p = keys.partition_of("acct-0", config.partitions)
    old = usage_pb2.RatedUsage(kind=usage_pb2.USAGE, account_id="acct-0", money_micros=1)
    await db.xadd(keys.usage_stream(p), {"r": old.SerializeToString()})
    await sms(gateway, subs, 3)
    truth = await stream_ids(db, config)
    assert len(truth) == 4

    c = Consumer(billing, "bill", "c1")
    await c.wait_for(4)
    assert sorted(c.ids) == sorted(truth)
    assert c.items[0] == usage_pb2.RatedUsage(record_id=c.ids[0], kind=usage_pb2.USAGE,
                                              account_id="acct-0", money_micros=1)
    assert await c.ack(c.ids) == 4
    assert (await db.xpending(keys.usage_stream(p), "bill"))["pending"] == 0
    await c.kill()
