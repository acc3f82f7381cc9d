"""The load generator: closed-loop (max throughput) and open-loop (fixed rate, latency from the
intended send time) gRPC clients over unary Charge, ChargeBatch and ChargeStream, with the
CPU of the server, Redis and this client measured over each run."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import grpc
import numpy as np
import psutil
from tqdm import tqdm

from tollgate.bench.diameter_client import DiameterPeer
from tollgate.bench.traffic import Traffic, greetings
from tollgate.engine.storage.redis_server import free_port
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc

APIS = ("unary", "batch", "stream", "diameter")
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
Call = tuple[list[cpb.ChargeRequest], float]  # requests of one call, its intended send time
SERVICE = "/tollgate.v1.Charging/"
SUCCESS = cpb.SUCCESS


@dataclass
class Run:
    """One measured run: what was offered and what came back."""

    target: str  # "engine" or "bare"
    api: str
    mode: str  # "closed" or "open"
    concurrency: int
    batch: int
    offered: float  # open loop: requests/s asked for; closed loop: 0
    seconds: float = 0.0
    requests: int = 0
    calls: int = 0
    errors: int = 0  # failed calls' requests and answers that are not SUCCESS
    error_kinds: dict[str, int] = field(default_factory=dict)  # result code / gRPC status
    throughput: float = 0.0  # answered requests/s
    latency_ms: dict[str, float] = field(default_factory=dict)  # per call: p50 p90 p99 p99.9
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core over the run
    round: int = 0  # `bench load --rounds`: which round of ceilings and engine runs
    replayed: int = 0  # requests sent from scripts (Client.run's `replay`)
    aof_rewrites: int = 0  # Redis's AOF rewrites that began during the run (engine runs)
    # CPU seconds of Redis's children (the rewrites) reaped during the run: on the machine's
    # cores, but not in the `redis` CPU column (Redis's own process)
    aof_cpu_s: float = 0.0

    def cpu_per_request_us(self) -> dict[str, float]:
        """CPU time per answered request, in µs, of each measured process group: what a
        request costs, which (unlike req/s) does not need the machine to be saturated."""
        if not self.requests:
            return {}
        return {name: pct / 100 * self.seconds * 1e6 / self.requests
                for name, pct in self.cpu.items()}

    @property
    def name(self) -> str:
        load = f"{self.offered:,.0f}/s" if self.mode == "open" else f"x{self.concurrency}"
        size = f" of {self.batch}" if self.api != "unary" else ""
        of_round = f", round {self.round}" if self.round else ""
        replayed = " replayed" if self.replayed else ""
        return f"{self.target} {self.api}{size} {self.mode} {load}{replayed}{of_round}"


class CpuProbe:
    """CPU time of named groups of processes between start() and stop(), as % of one
    core."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.procs = {name: [psutil.Process(pid) for pid in group]
                      for name, group in pids.items()}
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}

    def _cpu(self) -> dict[str, float]:
        out = {}
        for name, group in self.procs.items():
            out[name] = 0.0
            for p in group:
                try:
                    t = p.cpu_times()
                    out[name] += t.user + t.system
                except psutil.Error:
                    pass
        return out

    def start(self) -> None:
        self._t0, self._cpu0 = time.monotonic(), self._cpu()

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        return {name: round(100 * (v - self._cpu0[name]) / wall, 1)
                for name, v in self._cpu().items()}


def _count(run: Run, kind: str, n: int) -> None:
    run.errors += n
    run.error_kinds[kind] = run.error_kinds.get(kind, 0) + n


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = np.array(seconds) * 1000
    return {name: round(float(np.percentile(ms, q)), 3)
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))}


class Client:
    """Drives one Charging server with a traffic mix; one instance per target."""

    def __init__(self, address: str, traffic: Traffic, cpu: CpuProbe,
                 progress: bool = True, connections: int = 1, diameter: str = "") -> None:
        self.address = address
        self.diameter = diameter  # the server's Diameter address ("" = none)
        self.peers: list[tuple[DiameterPeer, Traffic]] = []
        self.cpu = cpu
        self.progress = progress
        # Each channel its own TCP connection, so server processes sharing the port
        # (SO_REUSEPORT) each get some of them. Each connection carries its own sessions, as
        # a gateway keeps a session with one charging peer (a Diameter session, an Nchf
        # charging data ref): all of a session's requests reach the same server process.
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(address, options=options)
                         for _ in range(connections)]
        self.shards = traffic.shard(connections)
        self.lanes = list(zip((charging_pb2_grpc.ChargingStub(c) for c in self.channels),
                              self.shards, strict=True))
        # The same methods sending and receiving bytes as they are (replays).
        self.raw = [(c.unary_unary(SERVICE + "ChargeBatch"),
                     c.stream_stream(SERVICE + "ChargeStream")) for c in self.channels]
        self._next = 0

    def _next_lane(self) -> tuple[int, Traffic]:
        """The next connection's index and its sessions, round robin."""
        self._next = (self._next + 1) % len(self.lanes)
        return self._next, self.lanes[self._next][1]

    @staticmethod
    def _scripts(callers: list[tuple[int, Traffic]], messages: int, size: int
                 ) -> tuple[list[tuple[int, Traffic]], list[list[bytes]]]:
        """Each caller with sessions of its own (callers of one connection share its
        sessions out: Traffic.shard) and its script of `messages` messages."""
        shares: dict[int, list[Traffic]] = {}
        for lane, traffic in callers:
            shares.setdefault(lane, []).append(traffic)
        for lane, traffics in shares.items():
            shares[lane] = traffics[0].shard(len(traffics))
        callers = [(lane, shares[lane].pop()) for lane, _ in callers]
        return callers, [traffic.scripted(messages, size) for _, traffic in callers]

    def peer(self) -> tuple[DiameterPeer, Traffic]:
        """The next Diameter connection, with the sessions of the gRPC one of its index (a
        session keeps one connection whichever front a run uses)."""
        self._next = (self._next + 1) % len(self.peers)
        return self.peers[self._next]

    @property
    def ended(self) -> int:
        """Sessions that ran to their end (or were refused)."""
        return sum(traffic.ended for _, traffic in self.lanes)

    async def close(self) -> None:
        for c in self.channels:
            await c.close()
        for p, _ in self.peers:
            await p.close()

    async def meet(self, prefix: str, population: int, size: int = 1000, *,
                   every_connection: bool = False) -> dict[str, float]:
        """Opens and ends a session of every subscriber, asking and using nothing, `size` at
        a time over the connections (each subscriber over each connection with
        `every_connection`: server processes sharing the port each have their own caches),
        so the measured runs meet no account for the first time. Returns the subscribers,
        the seconds it took and the requests not answered SUCCESS."""
        tag = f"{self.shards[0].tag}.meet"
        lanes = len(self.lanes)

        async def over(k: int, stub: charging_pb2_grpc.ChargingStub) -> int:
            numbers = range(population) if every_connection else range(k, population, lanes)
            refused = 0
            for calls in greetings(prefix, numbers, size, f"{tag}{k}"):
                for requests in calls:
                    answer = await stub.ChargeBatch(cpb.ChargeBatchRequest(requests=requests))
                    refused += sum(a.result != SUCCESS for a in answer.answers)
            return refused

        started = time.perf_counter()
        refused = await asyncio.gather(*(over(k, stub) for k, (stub, _) in enumerate(self.lanes)))
        return {"subscribers": population, "seconds": round(time.perf_counter() - started, 2),
                "refused": sum(refused)}

    async def wait_ready(self, timeout_s: float = 60) -> None:
        for c in self.channels:
            await asyncio.wait_for(c.channel_ready(), timeout_s)
        if self.diameter and not self.peers:
            self.peers = [(await DiameterPeer.connect(self.diameter), shard)
                          for shard in self.shards]

    # --- one call --------------------------------------------------------------------------

    @staticmethod
    async def _unary(stub: charging_pb2_grpc.ChargingStub,
                     requests: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        return [await stub.Charge(requests[0])]

    @staticmethod
    async def _batch(stub: charging_pb2_grpc.ChargingStub,
                     requests: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        answer = await stub.ChargeBatch(cpb.ChargeBatchRequest(requests=requests))
        return list(answer.answers)

    @staticmethod
    async def _diameter(peer: DiameterPeer,
                        requests: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        return [await peer.charge(requests[0])]

    @staticmethod
    def _settle(run: Run, traffic: Traffic, requests: list[cpb.ChargeRequest],
                answers: list[cpb.ChargeAnswer] | grpc.aio.AioRpcError) -> None:
        run.calls += 1
        if isinstance(answers, grpc.aio.AioRpcError):
            _count(run, answers.code().name, len(requests))
            for r in requests:
                traffic.failed(r)
            return
        run.requests += len(answers)
        for r, a in zip(requests, answers, strict=True):
            if a.result != cpb.SUCCESS:
                _count(run, cpb.ResultCode.Name(a.result), 1)
            traffic.answered(r, a)

    # --- runs ------------------------------------------------------------------------------

    async def run(self, target: str, api: str, seconds: float, *, concurrency: int = 1,
                  batch: int = 1000, rate: float = 0.0, replay: float = 0.0,
                  sample: Callable[[float], None] | None = None) -> Run:
        """Closed loop with `concurrency` calls in flight when `rate` is 0, else open loop
        at `rate` requests/s. `sample(elapsed_s)` is called every second (soak). `replay`
        (batch and stream): the messages for `replay` requests/s over the run are built and
        encoded first (Traffic.scripted), then sent as they are, and only the answers'
        result codes are read; past its script, a caller goes on with live traffic. Closed
        loop: each caller has its own script and sessions. Open loop: each connection has
        a script of its sessions, its messages sent at their times as live ones are (a
        session comes again only after the connection's other idle sessions, so its
        requests reach the server in order)."""
        size = 1 if api in ("unary", "diameter") else batch
        run = Run(target, api, "open" if rate else "closed", concurrency, size, rate)
        latencies: list[float] = []
        callers = [self._next_lane() for _ in range(concurrency)]
        scripts: list[list[bytes]] = [[] for _ in callers]
        replayed = replay and api in ("batch", "stream")
        if replayed and not rate:
            callers, scripts = self._scripts(callers, -(-int(replay * seconds) // (
                concurrency * size)), size)
        stop_at = time.perf_counter() + seconds
        if rate:
            # The stream's open loop takes one connection, the batch's each in turn.
            lanes = ([self._next_lane()] if api == "stream"
                     else list(enumerate(t for _, t in self.lanes)))
            messages = -(-int(replay * seconds) // (len(lanes) * size)) if replayed else 0
            plays = {lane: deque(traffic.scripted(messages, size)) for lane, traffic in lanes}
            stop_at = time.perf_counter() + seconds  # after the scripts are built
            work: Awaitable[Any] = self._open(run, api, size, rate, stop_at, latencies, plays)
        else:
            work = asyncio.gather(*(self._closed(run, api, size, stop_at, latencies, lane,
                                                 traffic, script)
                                    for (lane, traffic), script in zip(callers, scripts,
                                                                       strict=True)))
        self.cpu.start()
        started = time.perf_counter()
        ticker = asyncio.create_task(self._tick(run, seconds, started, sample))
        try:
            await work
        finally:
            ticker.cancel()
        run.seconds = time.perf_counter() - started
        run.cpu = self.cpu.stop()
        run.throughput = round(run.requests / run.seconds, 1)
        run.latency_ms = percentiles(latencies)
        return run

    async def _tick(self, run: Run, seconds: float, started: float,
                    sample: Callable[[float], None] | None) -> None:
        bar = tqdm(total=round(seconds), desc=f"{run.name:<36}", unit="s", leave=False,
                   disable=not self.progress, file=sys.stderr,
                   bar_format="{desc} {bar} {n_fmt}/{total_fmt} s {postfix}")
        try:
            while True:
                await asyncio.sleep(1)
                elapsed = time.perf_counter() - started
                bar.n = min(round(elapsed), bar.total)
                bar.set_postfix_str(f"{run.requests / elapsed:,.0f} req/s, {run.errors} errors")
                if sample is not None:
                    sample(elapsed)
        finally:
            bar.close()

    async def _closed(self, run: Run, api: str, size: int, stop_at: float,
                      latencies: list[float], lane: int, traffic: Traffic,
                      script: list[bytes]) -> None:
        stub: Any
        if api == "diameter":  # the Diameter connection of the gRPC one's index (peer())
            stub, traffic = self.peers[lane]
        else:
            stub = self.lanes[lane][0]
        if script:
            await self._replay(run, api, lane, script, size, stop_at, latencies)
            if time.perf_counter() >= stop_at:
                return
        stream = stub.ChargeStream() if api == "stream" else None
        send = self._sender(api)
        while time.perf_counter() < stop_at:
            requests = traffic.batch(size)
            call = _exchange(stream, requests) if stream is not None else send(stub, requests)
            await self._timed(run, traffic, requests, call, time.perf_counter(), latencies)
        if stream is not None:
            await stream.done_writing()

    async def _replay(self, run: Run, api: str, lane: int, script: list[bytes], size: int,
                      stop_at: float, latencies: list[float]) -> None:
        """Sends a caller's scripted messages one after another until the script or the
        time runs out; an answer is read for its result codes only."""
        call, open_stream = self.raw[lane]
        stream = open_stream() if api == "stream" else None
        for data in script:
            if time.perf_counter() >= stop_at:
                break
            since = time.perf_counter()
            reply = _written(stream, data) if stream is not None else call(data)
            if not await self._replayed(run, reply, size, since, latencies):
                # The script's later requests of its sessions would be refused (a stream is
                # over, too): live traffic goes on.
                return
        if stream is not None:
            await stream.done_writing()

    @staticmethod
    async def _replayed(run: Run, reply: Awaitable[bytes], size: int, since: float,
                        latencies: list[float]) -> bool:
        """Awaits a scripted message's answer (its latency counted from `since`) and counts
        its result codes; False if the call failed (counted as one failed call)."""
        try:
            data = await reply
        except grpc.aio.AioRpcError as e:
            latencies.append(time.perf_counter() - since)
            run.calls += 1
            _count(run, e.code().name, size)
            return False
        latencies.append(time.perf_counter() - since)
        results = [a.result for a in cpb.ChargeBatchAnswer.FromString(data).answers]
        run.calls += 1
        run.requests += len(results)
        run.replayed += len(results)
        if results.count(SUCCESS) != len(results):
            for r in results:
                if r != SUCCESS:
                    _count(run, cpb.ResultCode.Name(r), 1)
        return True

    async def _open(self, run: Run, api: str, size: int, rate: float, stop_at: float,
                    latencies: list[float], plays: dict[int, deque[bytes]]) -> None:
        """Calls start at t0 + k * size / rate whatever the answers do; a call's latency is
        counted from its intended start, so a slow server cannot hide its queue (no
        coordinated omission). `plays`: the connections to use and the scripted messages
        each sends first (batch and stream; empty: live traffic only)."""
        interval = size / rate
        t0 = time.perf_counter()
        if api == "stream":
            [(lane, play)] = plays.items()
            await self._open_stream(run, interval, t0, stop_at, size, latencies, lane, play)
            return
        send = self._sender(api)
        tasks: set[asyncio.Task[None]] = set()

        async def one(intended: float) -> None:
            if api == "diameter":
                stub, traffic = self.peer()
            else:
                lane, traffic = self._next_lane()
                stub, play = self.lanes[lane][0], plays[lane]
                if play:
                    await self._replayed(run, self.raw[lane][0](play.popleft()), size,
                                         intended, latencies)
                    return
            requests = traffic.batch(size)
            await self._timed(run, traffic, requests, send(stub, requests), intended, latencies)

        k = 0
        while (intended := t0 + k * interval) < stop_at:
            now = time.perf_counter()
            if intended > now:
                await asyncio.sleep(intended - now)
                continue
            while (intended := t0 + k * interval) <= now and intended < stop_at:
                task = asyncio.create_task(one(intended))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                k += 1
            await asyncio.sleep(0)
        if tasks:
            await asyncio.wait(tasks)

    def _sender(self, api: str) -> Callable[[Any, list[cpb.ChargeRequest]],
                                            Awaitable[list[cpb.ChargeAnswer]]]:
        return {"unary": self._unary, "diameter": self._diameter}.get(api, self._batch)

    async def _timed(self, run: Run, traffic: Traffic, requests: list[cpb.ChargeRequest],
                     call: Awaitable[list[cpb.ChargeAnswer]], since: float,
                     latencies: list[float]) -> None:
        """Awaits one call, its latency counted from `since`; a gRPC error is settled as
        the call's outcome."""
        answers: list[cpb.ChargeAnswer] | grpc.aio.AioRpcError
        try:
            answers = await call
        except grpc.aio.AioRpcError as e:
            answers = e
        except ConnectionError:  # a Diameter connection lost: counted as one failed call
            answers = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(), "diameter connection lost")
        latencies.append(time.perf_counter() - since)
        self._settle(run, traffic, requests, answers)

    async def _open_stream(self, run: Run, interval: float, t0: float, stop_at: float,
                           size: int, latencies: list[float], lane: int,
                           play: deque[bytes]) -> None:
        """The open loop on one stream of connection `lane`: its scripted messages (`play`)
        first, then live ones; with a script, the stream carries bytes as they are."""
        stub, traffic = self.lanes[lane]
        raw = bool(play)
        stream = self.raw[lane][1]() if raw else stub.ChargeStream()
        inflight: deque[Call] = deque()  # live: the requests; scripted: none
        sent = asyncio.Event()
        writing = True

        async def reader() -> None:
            while writing or inflight:
                if not inflight:
                    sent.clear()
                    await sent.wait()
                    continue
                reply = stream.read()
                requests, intended = inflight.popleft()
                if not requests:
                    await self._replayed(run, reply, size, intended, latencies)
                    continue
                msg = await reply
                latencies.append(time.perf_counter() - intended)
                if raw:
                    msg = cpb.ChargeBatchAnswer.FromString(msg)
                self._settle(run, traffic, requests, list(msg.answers))

        read = asyncio.create_task(reader())
        k = 0
        try:
            while (intended := t0 + k * interval) < stop_at:
                now = time.perf_counter()
                if intended > now:
                    await asyncio.sleep(intended - now)
                requests = [] if play else traffic.batch(size)
                message: Any = play.popleft() if play else cpb.ChargeBatchRequest(
                    requests=requests)
                inflight.append((requests, intended))
                sent.set()
                await stream.write(message.SerializeToString() if raw and requests else message)
                k += 1
        finally:
            writing = False
            sent.set()
        await read
        await stream.done_writing()


async def _written(stream: Any, data: bytes) -> bytes:
    """One message's bytes on a stream of bytes, and its answer's."""
    await stream.write(data)
    return cast(bytes, await stream.read())


async def _exchange(stream: Any, requests: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
    """One message on a bidirectional stream, and its answer."""
    await stream.write(cpb.ChargeBatchRequest(requests=requests))
    return list((await stream.read()).answers)


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Spawned:
    """A server child process and the address it announced."""

    process: subprocess.Popen[str]
    address: str
    log: IO[str]
    started: float  # time.perf_counter() before the spawn
    ready_s: float  # from spawn to the announced address

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def spawn(args: list[str], env: dict[str, str], log_path: Path,
          timeout_s: float = 120) -> Spawned:
    """Starts `python args...`; waits for the line that names HOST:PORT."""
    log = open(log_path, "w")  # noqa: SIM115  closed by Spawned.stop
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=log,
                               text=True, env={**os.environ, **env})
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(r" on (\S+:\d+)", line)
        if found:
            return Spawned(process, found.group(1), log, started, time.perf_counter() - started)
    process.kill()
    log.close()
    raise RuntimeError(f"{' '.join(args)} did not start; see {log_path}")


def engine_server(redis_url: str, log_dir: Path, port: int = 0, n: int = 0,
                  diameter_port: int = 0) -> Spawned:
    """`tollgate serve` against this Redis (on a free port unless given), warnings only; with
    `diameter_port`, Diameter too (any peer)."""
    env = {"TOLLGATE_METRICS_PORT": "0", "TOLLGATE_LOG_LEVEL": "WARNING"}
    diameter: list[str] = []
    if diameter_port:
        env.update(TOLLGATE_DIAMETER_PEERS="*", TOLLGATE_DIAMETER_ORIGIN_HOST="tollgate.bench")
        diameter = ["--diameter", f"127.0.0.1:{diameter_port}"]
    return spawn(["-m", "tollgate", "serve", "--listen", f"127.0.0.1:{port or free_port()}",
                  "--redis-url", redis_url, *diameter], env,
                 log_dir / f"engine-server-{n}.log")


def bare_server(log_dir: Path, port: int = 0, n: int = 0) -> Spawned:
    return spawn(["-m", "tollgate.bench.ceiling", "--listen",
                  f"127.0.0.1:{port or free_port()}"], {}, log_dir / f"bare-server-{n}.log")


def server_group(start: Callable[[int, int], Spawned], count: int) -> list[Spawned]:
    """`count` server processes sharing one port (SO_REUSEPORT: the kernel spreads the
    connections); start(port, n) starts one."""
    port = free_port()
    group: list[Spawned] = []
    try:
        for n in range(count):
            group.append(start(port, n))
    except BaseException:
        for s in group:
            s.stop()
        raise
    return group


@dataclass(frozen=True, slots=True)
class ColdStart:
    ready_s: float  # process start -> "serving" line
    first_answer_s: float  # process start -> first answered Charge
    first_charge_ms: float  # the first Charge call itself (kernels loaded/compiled if cold)
    second_charge_ms: float


async def cold_start(redis_url: str, log_dir: Path, subscriber: str) -> ColdStart:
    """Starts a server, sends a Charge as soon as it listens, stops it again."""
    server = engine_server(redis_url, log_dir)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = charging_pb2_grpc.ChargingStub(channel)
            times = []
            for n in range(2):
                t = time.perf_counter()
                answer = await stub.Charge(cpb.ChargeRequest(
                    session_id=f"cold-{os.getpid()}-{time.time_ns()}-{n}", type=cpb.EVENT,
                    subscriber_id=subscriber, units=[cpb.ServiceUnits(
                        rating_group=10, used=cpb.Units(total_octets=1000))]),
                    wait_for_ready=True, timeout=60)
                if answer.result != cpb.SUCCESS:
                    raise RuntimeError(f"cold-start charge refused: {answer.error_message}")
                times.append(time.perf_counter() - t)
                if n == 0:
                    first_answer = time.perf_counter() - server.started
    finally:
        server.stop()
    return ColdStart(round(server.ready_s, 3), round(first_answer, 3),
                     round(times[0] * 1000, 2), round(times[1] * 1000, 2))


def as_json(obj: Any) -> Any:
    """Dataclasses (and lists/dicts of them) as plain JSON values."""
    if isinstance(obj, list):
        return [as_json(x) for x in obj]
    if isinstance(obj, dict):
        return {k: as_json(v) for k, v in obj.items()}
    if hasattr(obj, "__dataclass_fields__"):
        d = asdict(obj)
        if isinstance(obj, Run):
            d["name"] = obj.name
        return d
    return obj
