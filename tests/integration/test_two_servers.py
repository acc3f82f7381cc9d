"""Two `tollgate serve` processes against one Redis: hammering the same accounts never
over-grants (the per-account version check works), and a request answered by one server and
retransmitted to the other gets the same answer and is not charged again.

The tests at the end pin down a stale-cache bug that was fixed: a batch that mixes cached
sessions with one the server has not cached, after another writer moved the account."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from tests.helpers import DATA_RG, EUR, MB, SMS_RG, VOICE_RG, Gateway, mscc, request, sample_plan
from tests.integration.ledger import (
    FloorWatch,
    StreamLink,
    Tariff,
    Traffic,
    balance_problems,
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


@pytest.fixture
def servers(redis_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    procs = [ServerProcess(redis_url, tmp_path / f"server-{n}.log") for n in (1, 2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        codes = [p.stop() for p in procs]
    logs = "\n".join(f"--- {p.address}\n{p.log_path.read_text()[-3000:]}" for p in procs)
    assert codes == [0, 0], f"exit codes {codes} after SIGTERM\n{logs}"


@pytest.fixture
async def gateways(servers: list[ServerProcess]) -> AsyncIterator[list[Gateway]]:
    channels = [grpc.aio.insecure_channel(p.address) for p in servers]
    yield [Gateway(c) for c in channels]
    for c in channels:
        await c.close()


def unary(gw: Gateway):
    async def send(reqs: list[cpb.ChargeRequest]) -> list[cpb.ChargeAnswer]:
        return list(await asyncio.gather(*(gw.charge(r) for r in reqs)))
    return send


@pytest.mark.slow
async def test_two_servers_hammering_two_accounts_never_over_grant(gateways, redis_url):
    one, two = gateways
    plan = money_only(sample_plan(), "cash")
    money = 40 * EUR
    subscribers = await provision(one.provisioning, plan, accounts=2, subscribers_per_account=3,
                                  money=money, credit_limit=0, prefix="h-")
    account_ids = sorted(set(subscribers.values()))
    # No overage: usage never exceeds the grant, so only a double grant could take money below
    # zero. UNABLE_TO_COMPLY (the account kept moving) is retried, as a gateway would.
    # A third of the sessions stay open, so a double grant also shows in the final balances.
    traffic = Traffic(11, subscribers, Tariff(plan), overage=False, retransmit=False,
                      retry_codes=frozenset({cpb.UNABLE_TO_COMPLY}),
                      left_open=0.3)
    links = [StreamLink(gw.charging) for gw in gateways]
    watch = FloorWatch(redis_url, await get_accounts(one.provisioning, account_ids)).start()
    lanes = []
    for n, gw in enumerate(gateways):
        lanes += [run_lane(traffic, gw.batch, f"batch{n}", 250, 30),
                  run_lane(traffic, links[n].send, f"stream{n}", 250, 30),
                  run_lane(traffic, unary(gw), f"unary{n}", 250, 30)]
    await asyncio.gather(*lanes)
    for link in links:
        await link.close()
    lowest = await watch.stop()

    accounts = await get_accounts(two.provisioning, account_ids)
    records = await usage_records(redis_url)
    info = summary(traffic, accounts) + f"\nlowest money seen: {lowest} ({watch.samples} reads)"
    problems = check_books(traffic, accounts, dict.fromkeys(account_ids, money), records,
                           dict.fromkeys(account_ids, 0), lowest)
    assert not problems, "\n".join(problems[:25]) + "\n" + info
    assert all(a.money_micros >= 0 for a in accounts.values()), info
    assert all(v >= 0 for v in lowest.values()), info
    # The hammering reached the floor: money ran out and grants were refused.
    assert traffic.stats["grant CREDIT_LIMIT_REACHED"] > 100, info
    assert all(a.money_micros + a.reserved_micros < money // 2 for a in accounts.values()), info
    assert len(traffic.answers) > 3000, info
    print(info)


async def open_books(gw: Gateway, *, money: int = 50 * EUR) -> str:
    """The sample plan with its data bundle, one account acct-0 and subscriber sub-0-0."""
    subs = await provision(gw.provisioning, sample_plan("rt"), accounts=1,
                           subscribers_per_account=1, money=money, credit_limit=0)
    return next(iter(subs))


def assert_once_each(records) -> None:
    keys = Counter((r.session_id, r.request_number, r.rating_group) for r in records
                   if r.session_id)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]


async def test_a_retransmission_to_the_other_server_gets_the_same_answer_once(gateways,
                                                                            redis_url):
    one, two = gateways
    sub = await open_books(one)
    money = 50 * EUR

    async def retransmit(first: Gateway, again: Gateway, req: cpb.ChargeRequest) -> None:
        ans = await first.charge(req)
        assert ans.result == cpb.SUCCESS, ans
        before = await one.account("acct-0")
        assert await again.charge(req) == ans
        assert await again.batch([req, req]) == [ans, ans]
        assert await one.account("acct-0") == before  # nothing charged, reserved or bumped

    def voice(**kw: int) -> cpb.ServiceUnits:
        return mscc(VOICE_RG, field="time_seconds", **kw)

    data = mscc(DATA_RG, want=2 * MB)
    # Server 2 has never seen the session.
    await retransmit(one, two, request("cold", 0, cpb.INITIAL, sub, data, voice(want=0)))
    await retransmit(one, two, request("cold", 1, cpb.UPDATE, sub,
                                       mscc(DATA_RG, used=2 * MB, want=0),
                                       voice(used=300, want=0)))
    await retransmit(one, two, request("cold", 2, cpb.TERMINATION, sub,
                                       mscc(DATA_RG, used=11 * MB), voice(used=42)))
    await retransmit(one, two, request("sms", 0, cpb.EVENT, sub,
                                       mscc(SMS_RG, used=2, field="service_units")))
    # Server 2 has the session cached as it was before server 1 moved it on.
    ans = await two.charge(request("warm", 0, cpb.INITIAL, sub, data))
    assert ans.result == cpb.SUCCESS, ans
    await retransmit(one, two, request("warm", 1, cpb.UPDATE, sub,
                                       mscc(DATA_RG, used=1 * MB, want=0)))
    await retransmit(one, two, request("warm", 2, cpb.TERMINATION, sub,
                                       mscc(DATA_RG, used=3 * MB)))
    # ... and the other way round.
    ans = await one.charge(request("back", 0, cpb.INITIAL, sub, data))
    assert ans.result == cpb.SUCCESS, ans
    await retransmit(two, one, request("back", 1, cpb.UPDATE, sub,
                                       mscc(DATA_RG, used=2 * MB, want=0)))

    records = await usage_records(redis_url)
    assert_once_each(records)
    charged = {(r.session_id, r.request_number, r.rating_group): r.units for r in records}
    assert charged == {("cold", 1, DATA_RG): 2 * MB, ("cold", 1, VOICE_RG): 300,
                       ("cold", 2, DATA_RG): 11 * MB, ("cold", 2, VOICE_RG): 42,
                       ("sms", 0, SMS_RG): 2, ("warm", 1, DATA_RG): 1 * MB,
                       ("warm", 2, DATA_RG): 3 * MB, ("back", 1, DATA_RG): 2 * MB}
    acct = await two.account("acct-0")
    assert balance_problems({"acct-0": acct}, {"acct-0": money}, records) == []
    assert {x.session_id for x in acct.reservations} == {"back"}


# --- another writer moved the account, and a batch mixes cached sessions with a session the
# server has not cached yet (once a stale-cache bug) ----------------------------------------

async def move_account_elsewhere(other: Gateway, sub: str, sid: str) -> None:
    ans = await other.charge(request(sid, 0, cpb.INITIAL, sub, mscc(DATA_RG, want=1 * MB)))
    assert ans.result == cpb.SUCCESS, ans


async def test_an_update_beside_a_new_session_after_the_other_server_wrote(gateways):
    one, two = gateways
    sub = await open_books(one)
    ans = await two.charge(request("s1", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=1 * MB)))
    assert ans.result == cpb.SUCCESS, ans
    await move_account_elsewhere(one, sub, "elsewhere")
    update, new = await two.batch([
        request("s1", 1, cpb.UPDATE, sub, mscc(DATA_RG, used=1 * MB, want=1 * MB)),
        request("s2", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=1 * MB))])
    assert new.result == cpb.SUCCESS, new
    assert update.result == cpb.SUCCESS, update


async def test_an_initial_retransmission_beside_a_new_session_is_not_granted_twice(
        gateways, redis_url):
    one, two = gateways
    plan = money_only(sample_plan(), "cash")
    money = 50 * EUR
    [sub] = await provision(one.provisioning, plan, accounts=1, subscribers_per_account=1,
                            money=money, credit_limit=0)
    first = request("u1", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=1 * MB))
    ans = await two.charge(first)
    assert ans.result == cpb.SUCCESS, ans
    await move_account_elsewhere(one, sub, "elsewhere")
    again, new = await two.batch([
        first, request("u2", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=1 * MB))])
    assert new.result == cpb.SUCCESS, new
    assert again == ans
    acct = await one.account("acct-0")
    records = await usage_records(redis_url)
    assert balance_problems({"acct-0": acct}, {"acct-0": money}, records) == []
    # elsewhere, u1 and u2 hold 1 MB each, at 1.00 per MB
    assert acct.reserved_micros == 3 * EUR, acct


async def test_an_event_retransmission_beside_a_new_session_is_not_charged_twice(
        gateways, redis_url):
    one, two = gateways
    sub = await open_books(one)
    event = request("sms", 0, cpb.EVENT, sub, mscc(SMS_RG, used=1, field="service_units"))
    ans = await two.charge(event)
    assert ans.result == cpb.SUCCESS, ans
    await move_account_elsewhere(one, sub, "elsewhere")
    again, new = await two.batch([
        event, request("s2", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=1 * MB))])
    assert new.result == cpb.SUCCESS, new
    assert again == ans
    records = await usage_records(redis_url)
    assert [r.session_id for r in records].count("sms") == 1

