"""Version conflicts: another writer moves an account under a batch; nothing lost or reordered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests.helpers import DATA_RG, EUR, MB, Gateway, mscc, request, running, usage_records
from tollgate.engine.charging.engine import Engine
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_client import connect_async
from tollgate.engine.storage.store import Store
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb


async def test_requests_rerun_after_a_conflict_keep_their_session_order(tollgate, gateway,
                                                                          redis_url):
    [sub] = await gateway.setup()
    first = await gateway.charge(request("s1", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    assert first.result == cpb.SUCCESS
    # Another writer bumps the account: the engine's cached version is now stale.
    p = tollgate.store.partition("acct-0")
    r = connect_async(redis_url)
    await r.hincrby(keys.account(p, "acct-0"), "ver", 1)
    await r.aclose()

    # rn 1 and rn 2 of one session land in one batch: rn 2 waits, rn 1 meets the conflict.
    answers = await gateway.batch([
        request("s1", 1, cpb.UPDATE, sub, mscc(DATA_RG, used=1 * MB, want=0)),
        request("s1", 2, cpb.UPDATE, sub, mscc(DATA_RG, used=2 * MB, want=0)),
    ])

    assert [a.result for a in answers] == [cpb.SUCCESS, cpb.SUCCESS]
    assert [a.request_number for a in answers] == [1, 2]
    assert tollgate.engine.conflicts >= 1
    acct = await gateway.account("acct-0")
    assert acct.buckets[0].used == 3 * MB
    assert acct.buckets[0].reserved == 10 * MB


async def test_a_top_up_between_batches_is_not_overwritten(tollgate, gateway):
    [sub] = await gateway.setup(plan=None, money=1_000_000)
    await gateway.charge(request("s1", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    await gateway.provisioning.TopUp(ppb.TopUpRequest(topup_id="t1", account_id="acct-0",
                                                      amount_micros=5_000_000))
    # The engine's cache predates the top-up; the version check makes it reload.
    await gateway.charge(request("s1", 1, cpb.TERMINATION, sub, mscc(DATA_RG, used=1 * MB)))
    acct = await gateway.account("acct-0")
    assert acct.money_micros == 6_000_000
    assert acct.buckets[0].used == 1 * MB


async def test_a_retransmitted_initial_on_a_server_that_never_saw_the_session_charges_once(
        config):
    """INITIALs are not read before they run: the apply refuses a session believed new that
    exists, and the request runs again on what is read then (the stored answer)."""
    async with running(config) as a, running(config) as b:
        [sub] = await a.setup()
        assert (await a.charge(request("s1", 0, cpb.INITIAL, sub,
                                       mscc(DATA_RG, want=0)))).result == cpb.SUCCESS
        first = await a.charge(request("s2", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
        # b caches the account at its current version with session s1 only.
        assert (await b.charge(request("s1", 1, cpb.UPDATE, sub,
                                       mscc(DATA_RG, used=1 * MB, want=0)))).result == cpb.SUCCESS
        before = await b.account("acct-0")

        again = await b.charge(request("s2", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))

        assert again == first
        after = await b.account("acct-0")
        assert after.buckets[0].reserved == before.buckets[0].reserved == 20 * MB
        assert after.money_micros == before.money_micros


async def test_a_first_charge_reads_its_account_but_not_the_session_it_opens(tollgate,
                                                                             gateway):
    """A subscriber's first charge (its account not cached) reads the account alone: the
    session an INITIAL opens is new unless the INITIAL is a retransmission, which the apply
    refuses and the run again reads and answers."""
    [sub] = await gateway.setup()
    assert (await gateway.charge(request("s1", 0, cpb.INITIAL, sub,
                                         mscc(DATA_RG, want=0)))).result == cpb.SUCCESS
    reads: list[list[tuple[str, list[str]]]] = []
    read_accounts = tollgate.store.read_accounts

    async def recorded(wanted: list[tuple[str, list[str]]]):  # the real read, noted
        reads.append(wanted)
        return await read_accounts(wanted)
    tollgate.store.read_accounts = recorded
    tollgate.engine.accounts.clear()  # as after a restart, or the account evicted

    first = await gateway.charge(request("s2", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    assert first.result == cpb.SUCCESS
    assert reads == [[("acct-0", [])]]
    before = await gateway.account("acct-0")

    tollgate.engine.accounts.clear()
    again = await gateway.charge(request("s2", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))

    assert again == first
    assert reads[1:] == [[("acct-0", [])], [("acct-0", ["s2"])]]
    after = await gateway.account("acct-0")
    assert after.buckets[0].reserved == before.buckets[0].reserved == 20 * MB
    assert after.money_micros == before.money_micros


async def test_after_a_conflict_cached_accounts_are_checked_before_the_kernel(tollgate, gateway,
                                                                            redis_url):
    [sub] = await gateway.setup()
    p = tollgate.store.partition("acct-0")
    r = connect_async(redis_url)

    async def another_server_writes() -> None:  # its apply would move the version so
        await r.hincrby(keys.account(p, "acct-0"), "ver", 1)

    first = await gateway.charge(request("s1", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    second = await gateway.charge(request("s2", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    assert [first.result, second.result] == [cpb.SUCCESS, cpb.SUCCESS]
    # Alone on its Redis, the engine trusts its cache: nothing read again, nothing refused.
    assert (tollgate.engine.stale_reads, tollgate.engine.conflicts) == (0, 0)

    await another_server_writes()
    update = await gateway.charge(request("s1", 1, cpb.UPDATE, sub,
                                          mscc(DATA_RG, used=MB, want=0)))
    # The first sign of another writer is a refused apply (the request ran again).
    assert update.result == cpb.SUCCESS
    assert (tollgate.engine.stale_reads, tollgate.engine.conflicts) == (0, 1)

    await another_server_writes()
    third = await gateway.charge(request("s3", 0, cpb.INITIAL, sub, mscc(DATA_RG, want=0)))
    await r.aclose()
    # From then on the cached copy is checked with the batch's reads: read again, not refused.
    assert third.result == cpb.SUCCESS
    assert (tollgate.engine.stale_reads, tollgate.engine.conflicts) == (1, 1)
    acct = await gateway.account("acct-0")
    assert (acct.buckets[0].used, acct.buckets[0].reserved) == (MB, 30 * MB)


@contextlib.asynccontextmanager
async def _served(config: Config, **overrides: Any
                  ) -> AsyncIterator[tuple[Gateway, str, Store, Engine]]:
    """A Tollgate of the test's own, with one prepaid account (no plan) and its subscriber."""
    app = await Tollgate(config.replace(**overrides)).start()
    channel = grpc.aio.insecure_channel(app.address)
    try:
        gw = Gateway(channel)
        [sub] = await gw.setup(plan=None, money=10 * EUR)
        assert app.store is not None and app.engine is not None
        yield gw, sub, app.store, app.engine
    finally:
        await channel.close()
        await app.stop()


async def test_a_batch_computed_on_one_in_flight_is_refused_with_it(
        config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second of two bulk batches on one account is prepared while the first is applied,
    on the outcome the first predicts (chained). A top-up lands just before the first's
    apply: the first is refused by its version check, the second by its token check (the
    top-up moved the version to the very number the first would have set), and both run
    again on what is read then: the top-up is kept and every charge is in the books once."""
    async with _served(config, max_batch=40) as (gw, sub, store, engine):
        apply_writes = store.apply_writes
        applies = 0

        async def first_meets_a_top_up(*args: Any, **kwargs: Any) -> list[int]:
            nonlocal applies
            applies += 1
            if applies == 1:
                assert (await store.top_up("t-1", "acct-0", 5 * EUR))[0]
            refused = await apply_writes(*args, **kwargs)
            if applies == 1:
                await asyncio.sleep(0.3)  # its landing held back: the second is prepared
            return refused
        monkeypatch.setattr(store, "apply_writes", first_meets_a_top_up)

        def events(call: int) -> list[cpb.ChargeRequest]:
            return [request(f"e-{call}-{n}", 0, cpb.EVENT, sub, mscc(DATA_RG, used=MB))
                    for n in range(40)]
        answers = await asyncio.gather(gw.batch(events(0)), gw.batch(events(1)))

        assert [a.result for call in answers for a in call] == [cpb.SUCCESS] * 80
        assert engine.chained >= 40  # the second call, on the first's predicted outcome
        assert engine.conflicts >= 2  # the first's write, and the second's chained on it
        db = connect_async(config.redis_url)
        records = await usage_records(db, config)
        await db.aclose()
        assert sorted(r.session_id for r in records) == sorted(
            f"e-{c}-{n}" for c in range(2) for n in range(40))
        account = await gw.account("acct-0")
        assert account.money_micros == 15 * EUR - sum(r.money_micros for r in records)
        assert sum(r.units for r in records) == 80 * MB


@pytest.mark.parametrize("call", ["unary", "bulk"])
async def test_a_busy_account_stops_being_chained_for_a_request_that_waits_for_a_landing(
        config, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """Callers keep a bulk batch in flight on one account at every moment, each computed on
    the one before it (chained). A request that waits for a landing (a unary call, whose
    lane never chains on the bulk lane; a retransmission in the bulk lane, whose stored
    answer is never given from a predicted state) stops the chaining on its account until
    it has run: otherwise it would wait to its deadline."""
    async with _served(config, max_batch=10, request_deadline_s=1.0) as (gw, sub, store, engine):
        apply_writes = store.apply_writes

        async def held(*args: Any, **kwargs: Any) -> list[int]:
            refused = await apply_writes(*args, **kwargs)
            await asyncio.sleep(0.02)  # each landing held back: the next batch chains on it
            return refused
        monkeypatch.setattr(store, "apply_writes", held)

        def event(session: str) -> cpb.ChargeRequest:
            return request(session, 0, cpb.EVENT, sub, mscc(DATA_RG, used=1000))
        first = await gw.charge(event("first"))
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.5  # the callers keep the account busy past the deadline
        results: list[int] = []

        async def caller(k: int) -> None:
            n = 0
            while loop.time() < end:
                answers = await gw.batch([event(f"c{k}-{n}-{i}") for i in range(10)])
                results.extend(a.result for a in answers)
                n += 1

        async def retransmits() -> cpb.ChargeAnswer:
            await asyncio.sleep(0.3)
            if call == "unary":
                return await gw.charge(event("first"))
            answers = await gw.batch([event("first")] + [event(f"r-{i}") for i in range(9)])
            results.extend(a.result for a in answers[1:])
            return answers[0]
        *_, again = await asyncio.gather(*(caller(k) for k in range(4)), retransmits())

        assert again == first  # the stored answer, not UNABLE_TO_COMPLY at its deadline
        assert set(results) == {cpb.SUCCESS} and len(results) > 100
        assert engine.chained > 100
