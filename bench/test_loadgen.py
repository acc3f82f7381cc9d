"""The load generator and the bare server work: short closed- and open-loop runs over every
API, against the real server and against the bare one (in process, to stay quick)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc

from tollgate.bench.ceiling import BareCharging
from tollgate.bench.cli import bytes_per_subscriber, idle_bytes_text
from tollgate.bench.loadgen import Client, CpuProbe, Run
from tollgate.bench.report import aof_rewrites, table
from tollgate.bench.traffic import PLANNED_QUOTA, Traffic
from tollgate.engine.ops import population
from tollgate.engine.ops.population import DEFAULT_PREFIX as PREFIX
from tollgate.engine.storage.store import Store
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc


def client(address: str, subscribers: int, connections: int = 1) -> Client:
    return Client(address, Traffic(subscribers, sessions=200), CpuProbe({"client": [os.getpid()]}),
                  progress=False, connections=connections)


async def provisioned_client(tollgate: Tollgate, subscribers: int, connections: int = 1
                             ) -> Client:
    """A client, ready, of a server whose Redis holds `subscribers` subscribers."""
    store = Store(tollgate.config.redis_url, tollgate.config.partitions)
    try:
        await population.provision(store, subscribers)
    finally:
        await store.close()
    c = client(tollgate.address, subscribers, connections)
    await c.wait_ready()
    return c


async def test_closed_and_open_loop_against_the_engine(tollgate: Tollgate) -> None:
    c = await provisioned_client(tollgate, 300)
    try:
        runs = [await c.run("engine", "unary", 0.4, concurrency=8),
                await c.run("engine", "batch", 0.4, concurrency=2, batch=50),
                await c.run("engine", "stream", 0.4, concurrency=2, batch=50),
                await c.run("engine", "batch", 0.4, batch=50, rate=1000),
                await c.run("engine", "stream", 0.4, batch=50, rate=1000),
                await c.run("engine", "unary", 0.4, rate=200)]
    finally:
        await c.close()
    for r in runs:
        assert r.requests > 0 and r.errors == 0, r
        assert set(r.latency_ms) == {"p50", "p90", "p99", "p99.9"}
        assert r.latency_ms["p50"] <= r.latency_ms["p99.9"]
    assert c.ended > 0  # sessions ran to their TERMINATION
    assert runs[3].requests <= 1000 * 0.4 + 50  # the open loop keeps to its rate
    lines = table(runs, {"bare unary": 1000.0, "apply": 5000.0})
    assert "% of bare unary" in lines[2] and "% of redis apply" in lines[3]


async def test_meeting_the_population_caches_every_account_and_moves_no_money(
        tollgate: Tollgate) -> None:
    store, engine = tollgate.store, tollgate.engine
    assert store is not None and engine is not None
    c = await provisioned_client(tollgate, 300, connections=3)
    try:
        before = [(await store.get_account(population.account_id(PREFIX, n)))[0]
                  for n in (0, 150, 299)]
        met = await c.meet(PREFIX, 300, size=64)
    finally:
        await c.close()
    assert met["subscribers"] == 300 and met["refused"] == 0
    ids = {population.account_id(PREFIX, n) for n in range(300)}
    assert ids <= set(engine.accounts)  # each one read once, before any run
    for acct in before:
        after, sessions = await store.get_account(acct.account_id)
        assert (after.money, after.money_reserved, after.spent) == (
            acct.money, acct.money_reserved, acct.spent) and sessions == []  # none left open


async def test_a_replay_sends_scripted_messages_and_every_one_is_charged(
        tollgate: Tollgate) -> None:
    c = await provisioned_client(tollgate, 300)
    try:
        # Scripts for 2 000 requests/s over 0.5 s: 10 messages of 50 for each of 2 callers;
        # a caller past its script goes on live.
        runs = [await c.run("engine", api, 0.5, concurrency=2, batch=50, replay=2000)
                for api in ("batch", "stream")]
    finally:
        await c.close()
    for r in runs:
        assert r.requests > 0 and r.errors == 0, r  # every scripted request SUCCESS
        assert 0 < r.replayed <= 2 * 10 * 50
        assert r.name.endswith("closed x2 replayed")


async def test_an_open_loop_replays_each_connections_script_at_the_rate(
        tollgate: Tollgate) -> None:
    c = await provisioned_client(tollgate, 300, connections=2)
    try:
        # Scripts for 1 000 requests/s over 0.5 s: 5 messages of 50 per connection (batch),
        # 10 on the stream's one, sent at 1 000 requests/s: the run's 10 calls.
        runs = [await c.run("engine", api, 0.5, batch=50, rate=1000, replay=1000)
                for api in ("batch", "stream")]
        # a script shorter than the run: the rest is live traffic
        short = await c.run("engine", "stream", 0.5, batch=50, rate=1000, replay=400)
    finally:
        await c.close()
    for r in (*runs, short):
        assert r.errors == 0, r  # every request SUCCESS, scripted and live alike
        assert r.requests <= 1000 * 0.5 + 50  # the open loop keeps to its rate
        assert r.name.endswith("open 1,000/s replayed")
    assert [r.replayed for r in runs] == [r.requests for r in runs] == [500, 500]
    assert (short.replayed, short.requests) == (200, 500)


def test_a_script_is_what_one_caller_sends_one_message_after_another() -> None:
    traffic = Traffic(100, sessions=30, max_updates=2)
    script = [cpb.ChargeBatchRequest.FromString(m).requests for m in traffic.scripted(12, 10)]
    assert [len(m) for m in script] == [10] * 12
    last: dict[str, int] = {}
    ended: set[str] = set()
    for message in script:
        ids = [r.session_id for r in message]
        assert len(set(ids)) == len(ids)  # a session at most once in flight
        for r in message:
            # each session's requests numbered in order, from its INITIAL to a TERMINATION
            assert r.session_id not in ended
            assert r.request_number == last.get(r.session_id, -1) + 1
            assert (r.type == cpb.INITIAL) == (r.request_number == 0)
            last[r.session_id] = r.request_number
            if r.type == cpb.TERMINATION:
                ended.add(r.session_id)
            elif r.type == cpb.UPDATE:
                # usage within what the plan grants by default (taken as granted)
                used = r.units[0].used.total_octets or r.units[0].used.time_seconds
                assert 0 < used <= max(PLANNED_QUOTA.values())
    assert ended and not traffic.busy  # all answered: the caller's sessions at the end


async def test_the_diameter_api_runs_closed_and_open_loop(config) -> None:
    app = await Tollgate(config.replace(diameter_listen="127.0.0.1:0",
                                        diameter_peers=("*",))).start()
    assert app.diameter is not None and app.store is not None
    c = Client(app.address, Traffic(300, sessions=200), CpuProbe({"client": [os.getpid()]}),
               progress=False, connections=2, diameter=f"127.0.0.1:{app.diameter.port}")
    try:
        await population.provision(app.store, 300)
        await c.wait_ready()
        runs = [await c.run("engine", "diameter", 0.5, concurrency=8),
                await c.run("engine", "diameter", 0.5, rate=200)]
    finally:
        await c.close()
        await app.stop()
    for r in runs:
        assert r.requests > 0 and r.errors == 0, r
    assert runs[1].requests <= 200 * 0.5 + 10  # the open loop keeps to its rate


async def test_bare_server_answers_every_api() -> None:
    server = grpc.aio.server()
    charging_pb2_grpc.add_ChargingServicer_to_server(BareCharging(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    c = client(f"127.0.0.1:{port}", 1000)
    try:
        runs = [await c.run("bare", api, 0.3, concurrency=2, batch=100)
                for api in ("unary", "batch", "stream")]
    finally:
        await c.close()
        await server.stop(0)
    assert all(r.requests > 0 and r.errors == 0 for r in runs)


def test_cli_help_names_every_action() -> None:
    from tollgate.engine.ops.cli import parser
    bench = parser().parse_args(["bench", "load", "--api", "batch", "--sweep"])
    assert bench.api == ["batch"] and bench.sweep
    for action in ("provision", "ceiling", "coldstart", "soak", "all"):
        assert parser().parse_args(["bench", action]).bench_command == action


def test_rounds_alternate_ceilings_and_engine(tmp_path: Path) -> None:
    """`tollgate bench load --rounds 2`, as a user runs it: its own redis-server and server
    processes; each engine run is compared with the bare run of its own round."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "tollgate", "bench", "load", "--api", "unary", "--rounds", "2",
         "--seconds", "0.5", "--subscribers", "300", "--no-progress", "--out", str(tmp_path)],
        cwd=root, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert "median (min-max) of 2 rounds: unary" in done.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["rounds"]["unary"]) == 2
    runs = results["runs"]
    assert [(r["target"], r["round"]) for r in runs] == [
        ("bare", 1), ("engine", 1), ("bare", 2), ("engine", 2)]
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in runs)


def test_a_round_s_runs_are_compared_with_its_own_ceilings() -> None:
    runs = [Run("engine", "unary", "closed", 64, 1, 0, throughput=500.0, round=k)
            for k in (1, 2)]
    lines = table(runs, {}, {1: {"bare unary": 1000.0}, 2: {"bare unary": 2000.0}})
    assert "50% of bare unary" in lines[2] and "25% of bare unary" in lines[3]
    assert lines[2].startswith("| engine unary closed x64, round 1 |")


def test_the_runs_redis_rewrote_its_aof_during_are_named_under_the_table() -> None:
    runs = [Run("engine", "batch", "open", 0, 100, 15000.0, aof_rewrites=n, aof_cpu_s=0.6 * n)
            for n in (0, 2)]
    assert aof_rewrites(runs) == [
        "Redis rewrote its AOF during: engine batch of 100 open 15,000/s (2; 1.2 s of CPU) (its "
        "latency tail is the rewrite's where it shares the cores)"]
    assert aof_rewrites(runs[:1]) == []


def test_the_table_gives_each_process_group_s_cpu_per_answered_request() -> None:
    # half a core for 2 s is 1 s of CPU: over 4000 requests, 250 µs each
    run = Run("engine", "batch", "closed", 4, 1000, 0, seconds=2.0, requests=4000,
              throughput=2000.0, cpu={"server": 50.0, "redis": 20.0, "client": 10.0})
    assert run.cpu_per_request_us() == {"server": 250.0, "redis": 100.0, "client": 50.0}
    assert "| 250 / 100 / 50 |" in table([run], {})[2]
    assert Run("engine", "batch", "closed", 4, 1000, 0).cpu_per_request_us() == {}


def test_each_connection_carries_its_own_sessions() -> None:
    shards = Traffic(1000, sessions=300).shard(3)
    assert [t.sessions for t in shards] == [100, 100, 100]
    sent = [{r.session_id for r in t.batch(50)} for t in shards]
    # a session belongs to one shard (one connection): no id in two of them
    assert sum(len(s) for s in sent) == len(set().union(*sent)) == 150


def test_pin_moves_every_thread_of_a_process() -> None:
    """--pin: a server's threads started before it is pinned move with it."""
    from tollgate.bench.cli import pin
    cores = sorted(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", "import threading, time; "
                              "threading.Thread(target=time.sleep, args=(30,)).start(); "
                              "print('ready', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        pin([child.pid], {cores[-1]})
        tasks = list(Path(f"/proc/{child.pid}/task").iterdir())
        assert len(tasks) >= 2
        assert all(os.sched_getaffinity(int(t.name)) == {cores[-1]} for t in tasks)
    finally:
        child.kill()
        child.wait()


def test_bytes_per_idle_subscriber_is_measured_only_over_what_this_run_created() -> None:
    # 1 000 subscribers created (2 000 hashes: an account and a subscriber each).
    assert bytes_per_subscriber(10_000_000, 10_500_000, 2_000) == 500
    # --target's Redis, already provisioned and serving: its memory may even have shrunk.
    assert bytes_per_subscriber(10_500_000, 10_400_000, 0) is None
    assert bytes_per_subscriber(10_500_000, 10_400_000, 2_000) is None
    assert idle_bytes_text(None).startswith("bytes per idle subscriber not measured")
    assert idle_bytes_text(500) == "500 bytes per idle subscriber"


def test_bench_without_its_extra_names_the_extra_to_install() -> None:
    # As on an install without the `bench` extra: importing tqdm fails.
    code = ("import sys; sys.modules['tqdm'] = None; from tollgate.engine.ops.cli import main; "
            "sys.exit(main(['bench', 'provision', '--subscribers', '10']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "tollgate bench needs tqdm" in done.stderr
    assert "pip install 'tollgate[bench]'" in done.stderr
