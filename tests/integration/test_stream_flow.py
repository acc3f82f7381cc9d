"""ChargeStream under hostile clients (issue 24): a stream cannot pile up answers for a client
that does not read them, an overloaded engine ends it with RESOURCE_EXHAUSTED, and an
unreadable message ends it promptly with INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp

import grpc
import pytest

from tests.helpers import EUR, SMS_RG, Gateway, mscc, request, running
from tollgate.engine.ops import metrics
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc

WINDOW = 200
NO_WINDOW_GROWTH = [("grpc.http2.bdp_probe", 0)]
"""The client's receive window stays at HTTP/2's 64 kB: its own buffer of answers fills in
a moment, so the test sees the server hold it back (not the client buffering megabytes)."""


def sms_batch(n: int, tag: str, subs: tuple[str, ...] = ("nobody",)) -> cpb.ChargeBatchRequest:
    return cpb.ChargeBatchRequest(requests=[
        request(f"{tag}-{k}", 0, cpb.EVENT, subs[k % len(subs)],
                mscc(SMS_RG, used=1, field="service_units"))
        for k in range(n)])


def in_flight() -> float:
    return metrics.STREAM_IN_FLIGHT._value.get()


async def answers_then_status(call: grpc.aio.StreamStreamCall) -> tuple[int, grpc.StatusCode, str]:
    """How many answers the call gave before it ended, and its status."""
    got = 0
    try:
        while await call.read() is not grpc.aio.EOF:
            got += 1
    except grpc.aio.AioRpcError as e:
        return got, e.code(), e.details() or ""
    return got, await call.code(), ""


async def test_an_unreadable_third_message_ends_the_stream_promptly(gateway):
    good = sms_batch(2, "ok").SerializeToString()
    for attempt in range(10):
        call = gateway.channel.stream_stream(
            "/tollgate.v1.Charging/ChargeStream", request_serializer=bytes,
            response_deserializer=cpb.ChargeBatchAnswer.FromString)()
        for body in (good, good, b"\xff\xff\xff\xff"):
            await call.write(body)  # and the client keeps its side open

        got, code, details = await asyncio.wait_for(answers_then_status(call), timeout=1.0)

        assert (attempt, got, code) == (attempt, 2, grpc.StatusCode.INVALID_ARGUMENT)
        assert details.startswith("message 3 of the stream: cannot read ChargeBatchRequest")


async def test_a_client_that_never_reads_is_held_back_by_flow_control(config):
    total, size = 5000, 200
    async with Tollgate(config.replace(stream_max_in_flight=WINDOW)) as app, \
            grpc.aio.insecure_channel(app.address, options=NO_WINDOW_GROWTH) as channel:
        subs = await Gateway(channel).setup(accounts=4, money=1000 * EUR)
        call = charging_pb2_grpc.ChargingStub(channel).ChargeStream()
        written = 0

        async def send() -> None:
            nonlocal written
            for m in range(total):
                await call.write(sms_batch(size, f"m{m}", tuple(subs)))
                written += 1

        sender = asyncio.create_task(send())
        peak = 0.0
        for _ in range(300):  # 3 s of a client that only sends
            await asyncio.sleep(0.01)
            peak = max(peak, in_flight())
        stalled_at, charged = written, app.engine.batcher.items
        await asyncio.sleep(0.5)

        assert peak <= WINDOW
        # What the engine charged is what the window lets through plus the answers that
        # gRPC's buffers hold (about 2 200 of these answers fill its 64 kB windows and
        # write buffer): not a backlog of messages (before: 64 messages, whatever their size).
        assert charged <= WINDOW + 3000
        assert written == stalled_at < total  # the client's sends wait: flow control
        assert app.engine.batcher.items == charged
        # Reading lets it go on.
        for _ in range(20):
            assert len((await call.read()).answers) == size
        await asyncio.sleep(0.5)
        assert app.engine.batcher.items > charged
        call.cancel()
        sender.cancel()
        await asyncio.sleep(0.2)
        assert in_flight() == 0


@pytest.mark.parametrize("first", [0, 10])
async def test_a_stream_the_engine_cannot_queue_ends_with_resource_exhausted(config, first):
    async with running(config.replace(max_queue=50)) as gw:
        call = gw.charging.ChargeStream()
        if first:
            await call.write(sms_batch(first, "fits"))
        await call.write(sms_batch(60, "over"))

        answered = 0
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in call:
                answered += 1

        assert answered == (1 if first else 0)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
        assert "max_queue 50" in (e.value.details() or "")


async def test_a_stream_whose_answers_are_not_read_is_ended_with_resource_exhausted(config):
    stall = 0.5
    async with Tollgate(config.replace(stream_max_in_flight=WINDOW,
                                       stream_stall_s=stall)) as app, \
            grpc.aio.insecure_channel(app.address, options=NO_WINDOW_GROWTH) as channel:
        subs = await Gateway(channel).setup(accounts=4, money=1000 * EUR)
        call = charging_pb2_grpc.ChargingStub(channel).ChargeStream()
        # More answers than the client's 64 kB window and gRPC's buffers hold, and few
        # enough requests that every write is taken (a write still waiting when the server
        # ends the call makes grpc.aio report INTERNAL instead: grpc/grpc#36066).
        sent = 16
        for m in range(sent):
            await asyncio.wait_for(call.write(sms_batch(WINDOW, f"m{m}", tuple(subs))), 5)
        charged = -1
        while charged != app.engine.batcher.items:  # until the stream is held back
            charged = app.engine.batcher.items
            await asyncio.sleep(0.3)
        assert charged < sent * WINDOW
        await asyncio.sleep(3 * stall)

        got, code, details = await asyncio.wait_for(answers_then_status(call), 5)
        assert got * WINDOW <= charged  # what ran before it was held, and nothing since
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "stream_stall_s 0.5" in details
        await asyncio.sleep(0.1)
        assert in_flight() == 0


def flood(address: str, subs: tuple[str, ...], streams: int, size: int) -> None:
    """Streams that send messages of `size` events as fast as gRPC takes them and never read
    an answer (their receive windows grow: gRPC reads for them), until the process ends. A
    process of their own, as such clients are: in the server's event loop, building their
    messages would slow the server itself."""
    async def stream(k: int) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = charging_pb2_grpc.ChargingStub(channel).ChargeStream()
            for m in itertools.count():
                await call.write(sms_batch(size, f"flood{k}-{m}", subs))

    async def run() -> None:
        await asyncio.gather(*(stream(k) for k in range(streams)))
    asyncio.run(run())


async def test_unary_calls_are_answered_promptly_while_streams_flood_the_server(config):
    size, lanes, streams = 500, 4, 4
    async with Tollgate(config) as app, \
            grpc.aio.insecure_channel(app.address) as channel:
        gateway = Gateway(channel)
        subs = await gateway.setup(accounts=lanes + 32, money=1000 * EUR)
        batcher = app.engine.batcher
        flooding = mp.get_context("spawn").Process(
            target=flood, args=(app.address, tuple(subs[lanes:]), streams, size), daemon=True)
        flooding.start()
        try:
            while batcher.queued < batcher.max_batch:  # the streams have a backlog
                await asyncio.sleep(0.01)
            stop = asyncio.Event()
            waited: list[int] = []  # requests the engine finished while each call waited
            results: list[int] = []
            most_queued = 0

            async def lane(sub: str) -> None:
                for n in itertools.count():
                    before = batcher.items
                    answer = await gateway.charge(request(
                        f"normal-{sub}-{n}", 0, cpb.EVENT, sub,
                        mscc(SMS_RG, used=1, field="service_units")))
                    waited.append(batcher.items - before)
                    results.append(answer.result)
                    if stop.is_set():
                        return

            callers = [asyncio.create_task(lane(sub)) for sub in subs[:lanes]]
            for _ in range(200):  # 2 s
                await asyncio.sleep(0.01)
                most_queued = max(most_queued, batcher.queued)
            stop.set()
            await asyncio.gather(*callers)
        finally:
            flooding.terminate()
            flooding.join()

        # Counted in work, not time (the box may be slow): a call waits for the batch being
        # prepared and its own, small ones while it comes (before: two of max_batch, 2 052).
        assert len(results) >= 20 and set(results) == {cpb.SUCCESS}
        assert sorted(waited)[len(waited) // 2] <= 4 * app.config.shared_batch
        # The streams' backlog stays what runs well before a deadline (before: their whole
        # windows, 4 x 4096, and calls expired with it: UNABLE_TO_COMPLY): 2 x max_batch, and
        # a message from each stream that found room just before it filled, and the calls.
        assert most_queued <= 2 * batcher.max_batch + streams * size + lanes


async def test_a_stream_sends_no_faster_than_stream_max_rate(config):
    rate, size, messages = 500, 100, 20
    async with Tollgate(config.replace(stream_max_rate=rate)) as app, \
            grpc.aio.insecure_channel(app.address) as channel:
        subs = await Gateway(channel).setup(accounts=4, money=1000 * EUR)
        call = charging_pb2_grpc.ChargingStub(channel).ChargeStream()
        started = asyncio.get_running_loop().time()
        for m in range(messages):
            await call.write(sms_batch(size, f"m{m}", tuple(subs)))
        await call.done_writing()
        answers = [len(a.answers) async for a in call]
        took = asyncio.get_running_loop().time() - started

        assert answers == [size] * messages
        # A second's worth at once (and one message into debt), then the rate.
        assert took >= (messages * size - rate - size) / rate
