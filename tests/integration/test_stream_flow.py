"""ChargeStream under hostile clients (issue 24): a stream cannot pile up answers for a client
that does not read them, an overloaded engine ends it with RESOURCE_EXHAUSTED, and an
unreadable message ends it promptly with INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from engine import metrics
from server import Tollgate
from tests.helpers import EUR, SMS_RG, Gateway, mscc, request, running
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
