"""`tollgate serve --workers N`: the workers share one port (SO_REUSEPORT); a worker killed
in the middle of traffic is restarted by the supervisor, and nothing it had in flight is
lost or charged twice (gateways send again what got no answer; retransmissions are answered
from the stored answers)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import grpc
import pytest

from tests.helpers import EUR, Gateway, sample_plan
from tests.integration.ledger import (
    Tariff,
    Traffic,
    check_books,
    get_accounts,
    money_only,
    provision,
    run_lane,
    summary,
    usage_records,
)
from tests.processes import ServerProcess
from tollgate.v1 import charging_pb2 as cpb


def resending(gw: Gateway):
    """ChargeBatch as a gateway does it: a call that got no answer (its worker died, the
    connection broke) is sent again, unchanged."""
    async def send(reqs: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        for _ in range(100):
            try:
                return await gw.batch(reqs)
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                    raise
                await asyncio.sleep(0.05)
        raise AssertionError("the server stayed unavailable")
    return send


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
async def test_workers_share_a_port_and_a_killed_worker_loses_nothing(redis_url: str,
                                                                      tmp_path: Path):
    server = ServerProcess(redis_url, tmp_path / "workers.log", ("--workers", "2")).start()
    try:
        server.wait_ready()
        [pids_line] = [line for line in server.seen if line.startswith("tollgate workers:")]
        pids = [int(p) for p in re.findall(r"\d+", pids_line.split("pids")[1])]
        assert len(pids) == 2 and all(alive(p) for p in pids), pids_line

        channels = [grpc.aio.insecure_channel(server.address) for _ in range(6)]
        gateways = [Gateway(c) for c in channels]
        plan = money_only(sample_plan(), "cash")
        money = 100 * EUR
        subscribers = await provision(gateways[0].provisioning, plan, accounts=4,
                                      subscribers_per_account=2, money=money, credit_limit=0)
        account_ids = sorted(set(subscribers.values()))
        traffic = Traffic(21, subscribers, Tariff(plan), overage=True,
                          retry_codes=frozenset({cpb.UNABLE_TO_COMPLY}))

        async def kill_a_worker() -> None:
            await asyncio.sleep(1.0)
            os.kill(pids[1], signal.SIGKILL)

        await asyncio.gather(kill_a_worker(), *(
            run_lane(traffic, resending(gw), f"lane{n}", 60, 8)
            for n, gw in enumerate(gateways)))
        restarted = await asyncio.to_thread(server.next_line, 60.0)
        assert restarted is not None and restarted.startswith("tollgate worker 1 restarted"), \
            restarted
        new_pid = int(restarted.split()[-1])
        assert alive(new_pid) and new_pid not in pids

        accounts = await get_accounts(gateways[0].provisioning, account_ids)
        records = await usage_records(redis_url)
        problems = check_books(traffic, accounts, dict.fromkeys(account_ids, money), records,
                               dict.fromkeys(account_ids, 0))
        assert not problems, "\n".join(problems[:25]) + "\n" + summary(traffic, accounts)
        assert len(traffic.answers) > 500
        for c in channels:
            await c.close()
    finally:
        code = server.stop()
    assert code == 0, server.log_path.read_text()[-3000:]
    assert not any(alive(p) for p in (*pids, new_pid))
