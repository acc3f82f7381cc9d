"""Usage control under random traffic: caps hold and the books balance.

Seeded random sessions (data, roaming data, voice, multi-service, SMS events; updates,
retransmissions in one message and in later ones, sessions left open) run over three
accounts at once: one with a spending cap, one postpaid with a credit limit, and a family
(shared account) with a spending cap, a credit limit and four members with different caps.
Top-ups and add-on purchases arrive while the traffic runs. Usage never exceeds the grant
(overage is charged regardless of caps, by design, so it is left out here).

While it runs, a watcher reads the accounts straight from Redis and notes any moment at which
a cap or the floor was passed; afterwards every record, reservation and balance is checked
(tests/integration/ledger.py) and the caps once more through GetAccount.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections import Counter

import grpc

from tests.helpers import DATA_RG, EUR, MB, Gateway, sample_plan
from tests.integration.ledger import (
    StreamLink,
    Tariff,
    Traffic,
    check_books,
    get_accounts,
    run_lane,
    summary,
    usage_records,
)
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_client import connect
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import events_pb2, usage_pb2
from tollgate.v1 import provisioning_pb2 as ppb

SEED = 20240917
SESSIONS_PER_LANE = 400
WIDTH = 24
ADDON_PRICE = 2 * EUR
TOPUP = 3 * EUR

# account -> (money, credit limit, spending cap)
ACCOUNTS = {"capped": (40 * EUR, 0, 12 * EUR),
            "postpaid": (3 * EUR, 15 * EUR, 0),
            "family": (30 * EUR, 5 * EUR, 20 * EUR)}
PLAIN_SUBSCRIBERS = {"cap-a": "capped", "cap-b": "capped", "post-a": "postpaid",
                     "post-b": "postpaid"}
MEMBERS = {"fam-0": ppb.MemberCaps(),                                   # no caps
           "fam-1": ppb.MemberCaps(octets=15 * MB),
           "fam-2": ppb.MemberCaps(money_micros=2 * EUR),
           "fam-3": ppb.MemberCaps(seconds=600, service_units=4)}


def plan() -> ppb.Plan:
    """The sample plan with a smaller (20 MB) bundle, so money and caps matter, and a data
    add-on that is used before the bundle."""
    p = sample_plan("usage-control")
    p.bundles[0].units = 20 * MB
    p.addons.append(ppb.AddOn(
        addon_id="data-50mb", price_micros=ADDON_PRICE,
        bundle=ppb.BundleTemplate(bucket_id="extra", rating_groups=[DATA_RG],
                                  unit_type=com.OCTETS, units=50 * MB, priority=-1)))
    return p


async def provision(gw: Gateway, p: ppb.Plan) -> dict[str, str]:
    """Returns subscriber -> account."""
    await gw.provisioning.PutPlan(p)
    for account_id, (money, limit, cap) in ACCOUNTS.items():
        await gw.provisioning.CreateAccount(ppb.CreateAccountRequest(
            account_id=account_id, plan_id=p.plan_id, initial_money_micros=money,
            credit_limit_micros=limit, spending_cap_micros=cap))
    for sub, account_id in PLAIN_SUBSCRIBERS.items():
        await gw.provisioning.CreateSubscriber(ppb.Subscriber(subscriber_id=sub,
                                                              account_id=account_id))
    for sub, caps in MEMBERS.items():
        await gw.provisioning.AddMember(ppb.AddMemberRequest(account_id="family",
                                                             subscriber_id=sub, caps=caps))
    return {**PLAIN_SUBSCRIBERS, **dict.fromkeys(MEMBERS, "family")}


class Money:
    """Top-ups and add-ons applied while traffic runs, per account (from the RPC answers)."""

    def __init__(self) -> None:
        self.topped_up: Counter[str] = Counter()
        self.addons: Counter[str] = Counter()
        self.refused_addons = 0


async def provisioning_traffic(gw: Gateway, stop: asyncio.Event, ledger: Money) -> None:
    """Every ~30 ms a top-up (every third sent twice: applied once) or an add-on purchase
    (refused when the money is not there) for a random account."""
    rng = random.Random(f"{SEED}/provisioning")
    n = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.03)
        account_id = rng.choice(sorted(ACCOUNTS))
        if rng.random() < 0.5:
            req = ppb.TopUpRequest(topup_id=f"t-{n}", account_id=account_id,
                                   amount_micros=TOPUP)
            for _ in range(2 if n % 3 == 0 else 1):
                if (await gw.provisioning.TopUp(req)).applied:
                    ledger.topped_up[account_id] += TOPUP
        else:
            try:
                bought = await gw.provisioning.BuyAddOn(ppb.BuyAddOnRequest(
                    order_id=f"o-{n}", account_id=account_id, addon_id="data-50mb"))
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
                ledger.refused_addons += 1
            else:
                assert bought.applied
                ledger.addons[account_id] += ADDON_PRICE
        n += 1


class CapWatch:
    """Reads every account hash (one atomic HGETALL each) in a tight loop on its own thread
    and notes each moment a spending cap, a member cap or the floor was passed."""

    def __init__(self, redis_url: str, partitions: int) -> None:
        self.redis_url = redis_url
        self.keys = {a: keys.account(keys.partition_of(a, partitions), a) for a in ACCOUNTS}
        self.violations: list[str] = []
        self.lowest: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cap-watch", daemon=True)

    def start(self) -> CapWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = connect(self.redis_url)
        try:
            while not self._stop.is_set():
                pipe = client.pipeline(transaction=False)
                for k in self.keys.values():
                    pipe.hgetall(k)
                for a, h in zip(self.keys, pipe.execute(), strict=True):
                    self._check(a, {k.decode(): v for k, v in h.items()})
                self.samples += 1
        finally:
            client.close()

    def _check(self, account_id: str, h: dict[str, bytes]) -> None:
        def n(field: str) -> int:
            return int(h.get(field, 0))

        found = []
        money = n("money")
        self.lowest[account_id] = min(money, self.lowest.get(account_id, money))
        if money < -n("climit"):
            found.append(f"money {money} below -{n('climit')}")
        if n("cap") and n("spent") + n("mres") > n("cap"):
            found.append(f"spent {n('spent')} + reserved {n('mres')} > cap {n('cap')}")
        for sub in MEMBERS:
            if f"m:{sub}" not in h:
                continue
            caps = json.loads(h[f"m:{sub}"])
            m = f"m:{sub}:"
            if caps["money"] and n(m + "spent") + n(m + "mres") > caps["money"]:
                found.append(f"{sub}: money {n(m + 'spent')} + {n(m + 'mres')} > "
                             f"{caps['money']}")
            for u, name in ((1, "oct"), (2, "sec"), (3, "svc")):
                if caps[name] and n(f"{m}u{u}") + n(f"{m}r{u}") > caps[name]:
                    found.append(f"{sub}: unit type {u}: {n(f'{m}u{u}')} + "
                                 f"{n(f'{m}r{u}')} > {caps[name]}")
        if found and len(self.violations) < 50:
            self.violations.append(f"{account_id} at sample {self.samples}: {found}")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)


def cap_problems(accounts: dict[str, ppb.Account]) -> list[str]:
    """Spending caps, member caps and floors as GetAccount shows them."""
    problems = []
    for a, acct in accounts.items():
        if acct.spending_cap_micros and (acct.cycle_spent_micros + acct.reserved_micros
                                         > acct.spending_cap_micros):
            problems.append(f"{a}: spent {acct.cycle_spent_micros} + reserved "
                            f"{acct.reserved_micros} > cap {acct.spending_cap_micros}")
        if acct.money_micros < -acct.credit_limit_micros:
            problems.append(f"{a}: money {acct.money_micros} < -{acct.credit_limit_micros}")
        for m in acct.members:
            for name in ("money_micros", "octets", "seconds", "service_units"):
                cap, used = getattr(m.caps, name), getattr(m.used, name)
                if cap and used > cap:
                    problems.append(f"{a}/{m.subscriber_id}: {name} used {used} > cap {cap}")
    return problems


def conservation_problems(accounts: dict[str, ppb.Account], ledger: Money,
                          records: list[usage_pb2.RatedUsage]) -> list[str]:
    """initial money + top-ups - add-ons = money + reserved + money of the usage records;
    per bucket: initial = remaining + reserved + units the usage records took from it."""
    problems = []
    usage = [r for r in records if r.kind == usage_pb2.USAGE]
    for a, acct in accounts.items():
        mine = [r for r in usage if r.account_id == a]
        paid = sum(r.money_micros for r in mine)
        came_in = ACCOUNTS[a][0] + ledger.topped_up[a] - ledger.addons[a]
        if came_in != acct.money_micros + acct.reserved_micros + paid:
            problems.append(f"{a}: money in {came_in} != free {acct.money_micros} + reserved "
                            f"{acct.reserved_micros} + usage {paid}")
        for b in acct.buckets:
            taken = sum(c.units for r in mine for c in r.charges if c.bucket_id == b.bucket_id)
            if b.initial != b.remaining + b.reserved + taken:
                problems.append(f"{a}/{b.bucket_id}: {b.initial} != remaining {b.remaining} + "
                                f"reserved {b.reserved} + usage {taken}")
    return problems


async def test_random_traffic_never_passes_a_cap_or_the_floor_and_the_books_balance(
        gateway, config):
    p = plan()
    subscribers = await provision(gateway, p)
    traffic = Traffic(SEED, subscribers, Tariff(p), overage=False)
    ledger = Money()
    watch = CapWatch(config.redis_url, config.partitions).start()
    link = StreamLink(gateway.charging)
    stop = asyncio.Event()
    side = asyncio.create_task(provisioning_traffic(gateway, stop, ledger))

    await asyncio.gather(
        run_lane(traffic, gateway.batch, "batch0", SESSIONS_PER_LANE, WIDTH),
        run_lane(traffic, gateway.batch, "batch1", SESSIONS_PER_LANE, WIDTH),
        run_lane(traffic, link.send, "stream0", SESSIONS_PER_LANE, WIDTH))
    stop.set()
    await side
    await link.close()
    await watch.stop()

    accounts = await get_accounts(gateway.provisioning, sorted(ACCOUNTS))
    records = await usage_records(config.redis_url)
    info = summary(traffic, accounts) + (
        f"\ntop-ups {dict(ledger.topped_up)} add-ons {dict(ledger.addons)} "
        f"refused add-ons {ledger.refused_addons} watch samples {watch.samples}")
    assert watch.violations == [], "\n".join(watch.violations[:20]) + "\n" + info
    assert cap_problems(accounts) == [], info
    assert conservation_problems(accounts, ledger, records) == [], info
    books = check_books(traffic, accounts, {a: v[0] for a, v in ACCOUNTS.items()}, records,
                        {a: -v[1] for a, v in ACCOUNTS.items()}, watch.lowest)
    assert books == [], "\n".join(books[:25]) + "\n" + info

    # The run exercised what it claims to: caps bit, money ran out, provisioning happened.
    events = []
    r = connect(config.redis_url)
    try:
        for pn in range(config.partitions):
            events += [events_pb2.Event.FromString(f[b"e"])
                       for _, f in r.xrange(keys.events_stream(pn))]
    finally:
        r.close()
    kinds = Counter((e.kind, e.account_id) for e in events)
    capped_members = {e.subscriber_id for e in events if e.kind == events_pb2.MEMBER_CAP}
    st = traffic.stats
    assert st["sessions"] == 3 * SESSIONS_PER_LANE, info
    assert st["grant CREDIT_LIMIT_REACHED"] > 30, info
    assert st["duplicate in the same message"] > 5, info
    assert st["retransmission in a later message"] > 20, info
    assert kinds[(events_pb2.SPENDING_CAP, "capped")] == 2, info     # 80 and 100 %, once
    assert kinds[(events_pb2.SPENDING_CAP, "family")] == 2, info
    assert {"fam-1", "fam-2", "fam-3"} <= capped_members, (capped_members, info)
    assert ledger.topped_up and ledger.addons, info
    assert watch.samples > 50, info
