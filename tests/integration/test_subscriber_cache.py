"""Subscriber lookups are cached for long; a change made through any server reaches all."""

from __future__ import annotations

import asyncio

from tests.helpers import DATA_RG, Gateway, mscc, request, running
from tollgate.engine.domain import ResultCode
from tollgate.engine.ops.config import Config
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb


async def _event_result(gw: Gateway, sub: str, n: int) -> int:
    ans = await gw.charge(request(f"ev-{n}", 0, cpb.EVENT, sub, mscc(DATA_RG, used=1000)))
    return ans.result


async def test_a_state_change_on_one_server_is_enforced_by_another(config: Config) -> None:
    cached = config.replace(subscriber_cache_s=3600.0)
    async with running(cached) as a, running(cached) as b:
        [sub] = await a.setup()
        assert await _event_result(b, sub, 0) == ResultCode.SUCCESS  # b now caches ACTIVE
        await a.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id=sub,
                                                               state=com.SUSPENDED))
        results = []
        for n in range(1, 50):
            results.append(await _event_result(b, sub, n))
            if results[-1] == ResultCode.END_USER_SERVICE_DENIED:
                break
            await asyncio.sleep(0.02)
        assert results[-1] == ResultCode.END_USER_SERVICE_DENIED, results
        # The server that made the change never answers from its old cache entry.
        assert await _event_result(a, sub, 99) == ResultCode.END_USER_SERVICE_DENIED


async def test_removed_member_is_unknown_at_once(config: Config) -> None:
    async with running(config.replace(subscriber_cache_s=3600.0)) as gw:
        await gw.setup()
        await gw.provisioning.AddMember(ppb.AddMemberRequest(account_id="acct-0",
                                                             subscriber_id="kid"))
        assert await _event_result(gw, "kid", 0) == ResultCode.SUCCESS
        await gw.provisioning.RemoveMember(ppb.RemoveMemberRequest(account_id="acct-0",
                                                                   subscriber_id="kid"))
        assert await _event_result(gw, "kid", 1) == ResultCode.USER_UNKNOWN
