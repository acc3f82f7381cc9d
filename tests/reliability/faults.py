"""Tools of the fault tests: a gateway link that survives dead servers (and can storm), the
traffic model's tolerance for in-flight errors, and the durability and books checks."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import grpc

from tests.integration.ledger import (
    Tariff,
    Traffic,
    check_books,
    get_accounts,
    provision,
    run_lane,
    summary,
    usage_records,
)
from tollgate.engine.billing.reconcile import reconcile
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc, provisioning_pb2_grpc, usage_pb2
from tollgate.v1 import provisioning_pb2 as ppb

UNABLE = cpb.UNABLE_TO_COMPLY
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50),
                   ("grpc.min_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 300)]


class FaultyTraffic(Traffic):
    """The ledger's traffic model for a world with faults: UNABLE_TO_COMPLY means "outcome
    unknown, send it again" (the retry must then get the first answer if it was applied), and
    a repeat that meets a fault may be answered UNABLE_TO_COMPLY too. Anything else (a false
    SUCCESS, a double charge, a lost record) still shows in check_books."""

    def __init__(self, seed: int, subscribers: dict[str, str], tariff: Tariff, **kw: object
                 ) -> None:
        super().__init__(seed, subscribers, tariff, overage=True,
                         retry_codes=frozenset({UNABLE}), max_retries=1_000_000, **kw)  # type: ignore[arg-type]

    def check_repeat(self, req: cpb.ChargeRequest, ans: cpb.ChargeAnswer, what: str) -> None:
        if ans.result == UNABLE:
            self.stats[f"{what}: UNABLE_TO_COMPLY"] += 1
            return
        super().check_repeat(req, ans, what)


class Link:
    """A gateway's link to one or more Tollgate servers over ChargeBatch.

    A message that gets no answer (the server died: UNAVAILABLE) is sent again, to the next
    server, until answered: the gateway's retransmission. While `gate` is closed nothing new is
    sent. In storm mode each request goes out three times, shuffled, to random servers at
    once, some copies late; every copy must get the same answer."""

    def __init__(self, addresses: list[str], seed: int = 1) -> None:
        self.addresses = list(addresses)
        self.channels = {a: grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS)
                         for a in addresses}
        self.gate = asyncio.Event()
        self.gate.set()
        self.storm = False
        self.inflight = 0
        self.turn = 0
        self.rng = random.Random(seed)
        self.errors: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self.problems: list[str] = []

    def stub(self, n: int = 0) -> charging_pb2_grpc.ChargingStub:
        return charging_pb2_grpc.ChargingStub(self.channels[self.addresses[n]])

    def provisioning(self, n: int = 0) -> provisioning_pb2_grpc.ProvisioningStub:
        return provisioning_pb2_grpc.ProvisioningStub(self.channels[self.addresses[n]])

    async def ready(self) -> None:
        """Waits until every channel is connected (one may still be backing off after its
        server restarted)."""
        for c in self.channels.values():
            await asyncio.wait_for(c.channel_ready(), 30)

    async def close(self) -> None:
        for c in self.channels.values():
            await c.close()

    async def _call(self, n: int, reqs: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        msg = cpb.ChargeBatchRequest(requests=reqs)
        return list((await self.stub(n).ChargeBatch(msg, timeout=30)).answers)

    async def send(self, reqs: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        while True:
            await self.gate.wait()
            self.inflight += 1
            try:
                if self.storm:
                    answers = await self._storm(reqs)
                else:
                    self.turn += 1  # spread over the servers
                    answers = await self._call(self.turn % len(self.addresses), reqs)
            except grpc.aio.AioRpcError as e:
                self.errors[e.code().name] += 1
                await asyncio.sleep(0.05)
                continue
            finally:
                self.inflight -= 1
            self.stats["answers"] += len(answers)
            failed = sum(a.result == UNABLE for a in answers)
            if failed:
                self.stats["UNABLE_TO_COMPLY"] += failed
                await asyncio.sleep(0.02)  # as a gateway would, before retrying
            return answers

    async def _storm(self, reqs: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        copies = [(i, self.rng.randrange(len(self.addresses)), self.rng.random() < 0.2)
                  for i in range(len(reqs)) for _ in range(3)]
        self.rng.shuffle(copies)
        got: dict[int, list[cpb.ChargeAnswer]] = defaultdict(list)
        for late in (False, True):  # late copies arrive after the others were answered
            by_server: dict[int, list[int]] = defaultdict(list)
            for i, n, is_late in copies:
                if is_late == late:
                    by_server[n].append(i)
            sent = list(by_server.items())
            results = await asyncio.gather(*(self._call(n, [reqs[i] for i in idx])
                                             for n, idx in sent))
            for (_, idx), answers in zip(sent, results, strict=True):
                for i, a in zip(idx, answers, strict=True):
                    got[i].append(a)
        self.stats["storm copies"] += len(copies)
        out = []
        for i, req in enumerate(reqs):
            known = [a for a in got[i] if a.result != UNABLE]
            if any(a != known[0] for a in known):
                self.problems.append(f"{req.session_id}/{req.request_number}: the copies of "
                                     f"one request got different answers: {known}")
            out.append(known[0] if known else got[i][0])
        return out

    async def quiesce(self) -> None:
        """Closes the gate and waits until nothing is in flight."""
        self.gate.clear()
        while self.inflight:
            await asyncio.sleep(0.01)


class Lanes:
    """n lanes of sessions, 16 at a time each, over the link, until stopped: faults are timed
    by answers, and a slow machine must not run out of traffic before the last fault."""

    def __init__(self, traffic: Traffic, link: Link, n: int = 3) -> None:
        self.traffic = traffic
        self.stop = asyncio.Event()
        self.running = asyncio.gather(*(run_lane(traffic, link.send, f"lane{k}", 10**9, 16,
                                                 self.stop) for k in range(n)))

    async def after(self, more: int) -> None:
        """Waits until `more` further requests were answered."""
        now = len(self.traffic.answers)
        await wait_until(lambda: len(self.traffic.answers) >= now + more, 120,
                         f"{more} answers")

    async def finish(self, more: int = 0) -> None:
        """After `more` answers, lets the sessions under way end, and waits for them."""
        await self.after(more)
        self.stop.set()
        await self.running


async def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def missing_records(traffic: Traffic, redis_url: str) -> list[tuple[str, int, int]]:
    """Records the SUCCESS answers so far promise but the usage streams lack."""
    present = {(r.session_id, r.request_number, r.rating_group)
               for r in await usage_records(redis_url) if r.kind == usage_pb2.USAGE}
    return sorted(set(traffic.records) - present)


async def setup_books(provisioning: provisioning_pb2_grpc.ProvisioningStub, plan: ppb.Plan,
                      money: int, accounts: int = 3, prefix: str = "") -> dict[str, str]:
    return await provision(provisioning, plan, accounts=accounts, subscribers_per_account=3,
                           money=money, credit_limit=0, prefix=prefix)


async def assert_books_balance(traffic: Traffic, link: Link, redis_url: str, money: int,
                               account_ids: list[str]) -> None:
    """Every record once and as predicted, every balance conserved, and `tollgate reconcile`
    reports zero discrepancies."""
    await link.ready()
    accounts = await get_accounts(link.provisioning(), account_ids)
    records = [r for r in await usage_records(redis_url) if r.account_id in account_ids]
    problems = link.problems + check_books(
        traffic, accounts, dict.fromkeys(account_ids, money), records,
        dict.fromkeys(account_ids, 0))
    info = (summary(traffic, accounts) + f"\nlink: {dict(link.stats)} transport errors: "
            f"{dict(link.errors)}")
    assert not problems, "\n".join(problems[:25]) + "\n" + info
    print(info)
    report = await asyncio.to_thread(reconcile, redis_url, progress=False)
    assert report.ok, "\n".join(report.lines())
    assert report.accounts >= len(account_ids)
