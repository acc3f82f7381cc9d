"""Varied charging traffic through a Tollgate started in this process, with its kernels'
compiled variants counted after start and again after the traffic: prints one JSON line, the
kernels that gained a variant (compiled, or loaded from Numba's cache, while a batch waited)
and the answers' result codes. Run by test_warm_kernels.py in a process of its own, so that
no earlier test's calls have compiled what the start should have."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator

from numba.core.registry import CPUDispatcher

from tests.helpers import (
    DATA_RG,
    EUR,
    MB,
    SMS_RG,
    VOICE_RG,
    Gateway,
    mscc,
    request,
    running,
)
from tollgate.engine.ops.config import Config
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb

INITIAL, UPDATE, TERMINATION, EVENT = (cpb.INITIAL, cpb.UPDATE, cpb.TERMINATION, cpb.EVENT)


def variants() -> dict[str, int]:
    """Each kernel of Tollgate's modules: how many variants it holds now."""
    found: dict[str, int] = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("tollgate."):
            for obj in list(vars(module).values()):
                if isinstance(obj, CPUDispatcher):
                    f = obj.py_func
                    found[f"{f.__module__}.{f.__qualname__}"] = len(obj.overloads)
    return found


async def traffic(gw: Gateway) -> Counter[int]:
    """Sessions opened, updated and ended in every API, several rating groups and zones, a
    shared account's member under a cap, an account run dry (events), retransmissions and
    refusals; the answers' result codes counted."""
    subs = await gw.setup(accounts=3, subscribers_per_account=2, money=50 * EUR)
    await gw.setup(accounts=1, money=EUR // 2, prefix="poor-")
    await gw.provisioning.AddMember(ppb.AddMemberRequest(
        account_id="acct-2", subscriber_id="teen", caps=ppb.MemberCaps(money_micros=EUR)))
    results: Counter[int] = Counter()
    unary = [request("u1", 0, INITIAL, subs[0], mscc(DATA_RG, want=0)),
             request("u1", 1, UPDATE, subs[0], mscc(DATA_RG, used=85 * MB, want=0)),
             request("u1", 1, UPDATE, subs[0], mscc(DATA_RG, used=85 * MB, want=0)),
             request("u1", 2, TERMINATION, subs[0], mscc(DATA_RG, used=MB)),
             request("e1", 0, EVENT, subs[1], mscc(SMS_RG, used=1, field="service_units")),
             request("x1", 3, UPDATE, subs[1], mscc(DATA_RG, used=MB))]
    for r in unary:
        results[(await gw.charge(r)).result] += 1
    opened = [request(f"b{n}", 0, INITIAL, subs[n % len(subs)],
                      mscc(DATA_RG, want=0), mscc(VOICE_RG, want=0, field="time_seconds"),
                      zone="roam-eu" if n % 3 == 0 else "", destination="+3312345")
              for n in range(24)]
    opened += [request("t0", 0, INITIAL, "teen", mscc(DATA_RG, want=0)),
               request("p0", 0, INITIAL, "poor-sub-0-0", mscc(DATA_RG, want=0)),
               request("", 0, INITIAL, subs[0]),
               request("nobody", 0, INITIAL, "no-such-subscriber")]
    later = [request(f"b{n}", 1, UPDATE, subs[n % len(subs)],
                     mscc(DATA_RG, used=2 * MB, want=0),
                     mscc(VOICE_RG, used=61, want=0, field="time_seconds"))
             for n in range(24)]
    later += [request("t0", 1, UPDATE, "teen", mscc(DATA_RG, used=2 * MB, want=0)),
              request("p0", 1, UPDATE, "poor-sub-0-0", mscc(DATA_RG, used=MB, want=0))]
    ended = [request(f"b{n}", 2, TERMINATION, subs[n % len(subs)], mscc(DATA_RG, used=MB))
             for n in range(0, 24, 2)]
    for msgs in (opened, later, later[:3], ended):
        results.update(a.result for a in await gw.batch(msgs))

    async def messages() -> AsyncIterator[cpb.ChargeBatchRequest]:
        for n in range(4):
            yield cpb.ChargeBatchRequest(requests=[
                request(f"s{n}-{k}", 0, EVENT, subs[k % len(subs)],
                        mscc(SMS_RG, used=1, field="service_units")) for k in range(n + 1)])
    async for answer in gw.charging.ChargeStream(messages()):
        results.update(a.result for a in answer.answers)
    return results


async def main(redis_url: str) -> None:
    config = Config(listen="127.0.0.1:0", redis_url=redis_url, partitions=8,
                    batch_window_ms=0.5, log_format="text", metrics_port=0)
    async with running(config) as gw:
        before = variants()
        results = await traffic(gw)
        after = variants()
    grown = {k: (before.get(k, 0), n) for k, n in after.items() if n > before.get(k, 0)}
    print(json.dumps({"grown": grown, "results": dict(results), "kernels": len(after)}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
