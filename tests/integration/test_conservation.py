"""Conservation: for any mix of sessions, initial balance = current balance + live reservations
+ rated usage records, in money and in bucket units.

Thousands of seeded random sessions (data, roaming data, voice, multi-service, SMS events; with
updates, overage, retransmissions inside one message and in later ones, sessions left open)
over three shared accounts, half through ChargeBatch and half through ChargeStream at the same
time. Then every account, bucket, reservation and record is checked (tests/integration/ledger.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.helpers import EUR, sample_plan
from tests.integration.ledger import (
    FloorWatch,
    StreamLink,
    Tariff,
    Traffic,
    check_books,
    get_accounts,
    provision,
    run_lane,
    summary,
    usage_records,
)
from tollgate.v1 import provisioning_pb2 as ppb

ACCOUNTS = 3
SUBSCRIBERS_PER_ACCOUNT = 4
LANES = 4            # two ChargeBatch lanes and two ChargeStream lanes
SESSIONS_PER_LANE = 600
WIDTH = 40           # sessions in flight per lane (requests per message)


async def top_ups(provisioning, account_ids: list[str], stop: asyncio.Event) -> int:
    """Tops accounts up by 5.00 every 50 ms while traffic runs; every third id is sent twice
    (it must be applied once). Returns how many were applied."""
    applied = 0
    n = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
        req = ppb.TopUpRequest(topup_id=f"topup-{n}", account_id=account_ids[n % len(account_ids)],
                               amount_micros=5 * EUR)
        for _ in range(2 if n % 3 == 0 else 1):
            applied += (await provisioning.TopUp(req)).applied
        n += 1
    return applied


async def drive(gateway, redis_url: str, *, seed: int, money: int, credit_limit: int,
                overage: bool, topups: bool = False) -> tuple[Traffic, dict, list[str]]:
    plan = sample_plan("ledger")
    subscribers = await provision(gateway.provisioning, plan, accounts=ACCOUNTS,
                                  subscribers_per_account=SUBSCRIBERS_PER_ACCOUNT, money=money,
                                  credit_limit=credit_limit)
    account_ids = sorted(set(subscribers.values()))
    traffic = Traffic(seed, subscribers, Tariff(plan), overage=overage)
    links = [StreamLink(gateway.charging) for _ in range(LANES // 2)]
    watch = FloorWatch(redis_url, await get_accounts(gateway.provisioning, account_ids)).start()
    lanes = [run_lane(traffic, gateway.batch, f"batch{n}", SESSIONS_PER_LANE, WIDTH)
             for n in range(LANES // 2)]
    lanes += [run_lane(traffic, link.send, f"stream{n}", SESSIONS_PER_LANE, WIDTH)
              for n, link in enumerate(links)]
    stop = asyncio.Event()
    topping = asyncio.create_task(top_ups(gateway.provisioning, account_ids, stop)
                                  if topups else asyncio.sleep(0, 0))
    await asyncio.gather(*lanes)
    stop.set()
    traffic.stats["top-ups"] = await topping
    for link in links:
        await link.close()
    lowest = await watch.stop()
    accounts = await get_accounts(gateway.provisioning, account_ids)
    records = await usage_records(redis_url)
    problems = check_books(traffic, accounts, dict.fromkeys(account_ids, money), records,
                           dict.fromkeys(account_ids, -credit_limit), lowest)
    return traffic, accounts, problems


def assert_books_balance(traffic: Traffic, accounts: dict, problems: list[str]) -> None:
    assert not problems, (f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:25])
                          + "\n" + summary(traffic, accounts))


def assert_mix_was_rich(traffic: Traffic, accounts: dict) -> None:
    """The run exercised what it claims to: thousands of sessions, repeats, sessions left
    open, and money that ran out (so the floor mattered)."""
    st = traffic.stats
    info = summary(traffic, accounts)
    assert st["sessions"] == LANES * SESSIONS_PER_LANE, info
    assert len(traffic.answers) > 5000, info
    assert len(traffic.records) > 2000, info
    assert st["duplicate in the same message"] > 50, info
    assert st["retransmission in a later message"] > 100, info
    assert st["left open"] > 20, info
    assert st["grant CREDIT_LIMIT_REACHED"] > 50, info
    assert sum(len(a.reservations) for a in accounts.values()) > 0, info


@pytest.mark.slow
async def test_random_sessions_with_overage_conserve_money_and_units(gateway, redis_url):
    started = time.monotonic()
    traffic, accounts, problems = await drive(gateway, redis_url, seed=20240601,
                                              money=300 * EUR, credit_limit=0, overage=True)
    assert_books_balance(traffic, accounts, problems)
    assert_mix_was_rich(traffic, accounts)
    assert traffic.stats["overage reports"] > 100, summary(traffic, accounts)
    print(f"{len(traffic.answers)} requests in {time.monotonic() - started:.1f}s\n"
          + summary(traffic, accounts))


@pytest.mark.slow
async def test_prepaid_money_never_goes_below_zero_without_overage(gateway, redis_url):
    traffic, accounts, problems = await drive(gateway, redis_url, seed=7, money=250 * EUR,
                                              credit_limit=0, overage=False)
    assert_books_balance(traffic, accounts, problems)
    assert_mix_was_rich(traffic, accounts)
    assert all(a.money_micros >= 0 for a in accounts.values()), summary(traffic, accounts)


@pytest.mark.slow
async def test_postpaid_money_stops_at_the_credit_limit(gateway, redis_url):
    limit = 40 * EUR
    traffic, accounts, problems = await drive(gateway, redis_url, seed=99, money=200 * EUR,
                                              credit_limit=limit, overage=False)
    assert_books_balance(traffic, accounts, problems)
    assert_mix_was_rich(traffic, accounts)
    info = summary(traffic, accounts)
    assert all(a.money_micros >= -limit for a in accounts.values()), info
    # The limit was really used: some account spent into credit.
    assert any(a.money_micros < 0 for a in accounts.values()), info



@pytest.mark.slow
async def test_top_ups_during_traffic_keep_the_books_balanced(tollgate, gateway, redis_url):
    traffic, accounts, problems = await drive(gateway, redis_url, seed=5, money=150 * EUR,
                                              credit_limit=0, overage=True, topups=True)
    assert traffic.stats["top-ups"] > 10, summary(traffic, accounts)
    # The books are checked on the path that is hardest to keep right: batches computed on
    # the predicted state of one in flight (chained), refused with it when a top-up moved
    # an account under them, and run again.
    assert tollgate.engine.chained > 0 and tollgate.engine.conflicts > 0, (
        tollgate.engine.chained, tollgate.engine.conflicts)
    assert_books_balance(traffic, accounts, problems)
    assert_mix_was_rich(traffic, accounts)
