"""The ceilings engine figures are divided by: (a) a bare grpc.aio Charging server that answers
without work, (b) the engine's own Redis apply step driven with pre-built batches.

`python -m tollgate.bench.ceiling --listen HOST:PORT` runs (a) until SIGTERM (the load generator
starts it as a separate process, as it does the real server)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import numpy as np

from tollgate.bench.loadgen import CpuProbe
from tollgate.bench.traffic import Traffic
from tollgate.engine.charging.engine import Engine
from tollgate.engine.charging.kernels.apply_calls import G_CHAIN, G_VERSION
from tollgate.engine.ops.config import Config
from tollgate.engine.storage.store import Store
from tollgate.engine.storage.writes import Writes
from tollgate.server import on_one_port
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc

# --- (a) the bare server ---------------------------------------------------------------------


def bare_answer(r: cpb.ChargeRequest) -> cpb.ChargeAnswer:
    return cpb.ChargeAnswer(session_id=r.session_id, request_number=r.request_number,
                            result=cpb.SUCCESS)


class BareCharging(charging_pb2_grpc.ChargingServicer):
    """The Charging service with the same messages, answering SUCCESS without any work."""

    async def Charge(self, request: cpb.ChargeRequest,
                     context: grpc.aio.ServicerContext) -> cpb.ChargeAnswer:
        return bare_answer(request)

    async def ChargeBatch(self, request: cpb.ChargeBatchRequest,
                          context: grpc.aio.ServicerContext) -> cpb.ChargeBatchAnswer:
        return cpb.ChargeBatchAnswer(answers=[bare_answer(r) for r in request.requests])

    async def ChargeStream(self, request_iterator: AsyncIterator[cpb.ChargeBatchRequest],
                           context: grpc.aio.ServicerContext
                           ) -> AsyncIterator[cpb.ChargeBatchAnswer]:
        async for msg in request_iterator:
            yield cpb.ChargeBatchAnswer(answers=[bare_answer(r) for r in msg.requests])


async def serve_bare(listen: str) -> None:
    """Serves BareCharging until SIGTERM/SIGINT; prints the bound address first. It runs
    as many gRPC servers on the port as the engine does (`grpc_listeners`)."""
    def make(address: str) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.so_reuseport", 1)])
        charging_pb2_grpc.add_ChargingServicer_to_server(BareCharging(), server)
        return server, server.add_insecure_port(address)

    servers, port = on_one_port(listen, Config().grpc_listeners, make)
    for server in servers:
        await server.start()
    print(f"bare charging server on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.gather(*(s.stop(1) for s in servers))


# --- (b) the apply step ----------------------------------------------------------------------


class RecordingStore(Store):
    """The real store, keeping a copy of every batch of writes the engine applies."""

    def __init__(self, url: str, partitions: int) -> None:
        super().__init__(url, partitions)
        self.recording = False
        self.recorded: list[Writes] = []

    async def apply_writes(self, writes: Writes, retention_ms: int,
                           sent: Callable[[], None] | None = None, token: int = 0) -> list[int]:
        if self.recording:
            self.recorded.append(copy.deepcopy(writes))
        return await super().apply_writes(writes, retention_ms, sent, token)


@dataclass(frozen=True, slots=True)
class ApplyCeiling:
    batches: int
    requests_per_batch: float
    requests_per_s: float
    batch_ms_p50: float
    batch_ms_p99: float
    refused: int  # account writes refused by the version check (should be 0)
    cpu: dict[str, float]  # % of one core while replaying (Redis, this process)


async def capture_writes(config: Config, traffic: Traffic, batch: int, warmup: int,
                         batches: int) -> list[Writes]:
    """Runs the engine in process (no gRPC) over the traffic mix and keeps the account writes
    of `batches` full batches after `warmup` batches (so sessions are mid-life)."""
    store = RecordingStore(config.redis_url, config.partitions)
    await store.init()
    engine = Engine(store, config.replace(max_batch=batch))
    engine.start()
    try:
        for n in range(warmup + batches):
            store.recording = n >= warmup
            requests = traffic.batch(batch)
            for r, a in zip(requests, await engine.charge(requests), strict=True):
                traffic.answered(r, a)
    finally:
        await engine.close()
        await store.close()
    return store.recorded


async def rebase(store: Store, recorded: list[Writes]) -> None:
    """Sets each write's expected version to what it will find when replayed in order, and
    removes the sessions the writes create (the apply refuses to create one that exists).
    Writes chained on a batch in flight are replayed unchained: with their versions rebased
    and no other writer, the version check alone is exact (and costs Redis an HGET where a
    chained one costs an HMGET: a few % of the groups)."""
    account_keys = [w.account_keys() for w in recorded]
    keys = sorted({k for ks in account_keys for k in ks})
    created = {k for writes in recorded for k in writes.created_sessions()}
    pipe = store.redis.pipeline(transaction=False)
    for key in created:
        pipe.delete(key)
    await pipe.execute()
    pipe = store.redis.pipeline(transaction=False)
    for k in keys:
        pipe.hget(k, "ver")
    current = {k: int(v) for k, v in zip(keys, await pipe.execute(), strict=True)}
    for writes, ks in zip(recorded, account_keys, strict=True):
        writes.groups[:, G_CHAIN] = 0
        for g, k in enumerate(ks):
            writes.groups[g, G_VERSION] = current[k]
            current[k] += 1


async def apply_ceiling(config: Config, recorded: list[Writes], seconds: float,
                        cpu: CpuProbe | None = None) -> ApplyCeiling:
    """Replays the recorded batches through Store.apply, in order and one at a time as the
    engine does, for about `seconds`; only the apply calls are timed."""
    store = Store(config.redis_url, config.partitions)
    cpu = cpu or CpuProbe({})
    per_batch = [len(writes.sessions) for writes in recorded]
    times: list[float] = []
    refused = requests = 0
    cpu.start()
    try:
        while sum(times) < seconds:
            await rebase(store, recorded)
            for writes, n in zip(recorded, per_batch, strict=True):
                t = time.perf_counter()
                out = await store.apply_writes(writes, config.answer_retention_s * 1000)
                times.append(time.perf_counter() - t)
                refused += len(out)
                requests += n
    finally:
        await store.close()
    ms = np.array(times) * 1000
    return ApplyCeiling(len(times), requests / len(times), requests / sum(times),
                        float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), refused,
                        cpu.stop())


def main() -> None:
    p = argparse.ArgumentParser(description="Run the bare Charging server (ceiling a).")
    p.add_argument("--listen", default="127.0.0.1:0")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_bare(p.parse_args().listen))


if __name__ == "__main__":
    main()
