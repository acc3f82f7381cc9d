"""A session belongs to the subscriber (and account) that opened it: another subscriber whose
account shares the partition (so the session key) cannot read, charge or end it.

The attack of issue 24: the partition is public arithmetic on the account id, so an account
of the same partition is easy to find; its subscriber reused the victim's session id."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.helpers import EUR, SMS_RG, VOICE_RG, mscc, request, sample_plan, usage_records
from tollgate.engine.billing.reconcile import reconcile
from tollgate.engine.storage import keys
from tollgate.engine.storage.sweeper import Sweeper
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import provisioning_pb2 as ppb

VICTIM, VICTIM_SUB = "victim", "victim-sub"
SESSION = "pgw;1;victim-call"
LATER = int(time.time() * 1000) + 10 * 3600 * 1000  # past every validity and grace


def attacker_account(partitions: int) -> str:
    """An account id of the victim's partition."""
    want = keys.partition_of(VICTIM, partitions)
    return next(a for a in (f"attacker-{n}" for n in itertools.count())
                if keys.partition_of(a, partitions) == want)


async def two_accounts(gateway, partitions: int) -> tuple[str, str]:
    attacker = attacker_account(partitions)
    plan = sample_plan()
    await gateway.provisioning.PutPlan(plan)
    for account, sub in ((VICTIM, VICTIM_SUB), (attacker, "attacker-sub")):
        await gateway.provisioning.CreateAccount(ppb.CreateAccountRequest(
            account_id=account, plan_id=plan.plan_id, initial_money_micros=100 * EUR))
        await gateway.provisioning.CreateSubscriber(
            ppb.Subscriber(subscriber_id=sub, account_id=account))
    return attacker, "attacker-sub"


def voice(**kw: int) -> cpb.ServiceUnits:
    return mscc(VOICE_RG, field="time_seconds", **kw)


def books(acct: ppb.Account) -> tuple[int, int, int]:
    return acct.money_micros, acct.reserved_micros, len(acct.reservations)


def refused(answer: cpb.ChargeAnswer) -> bool:
    return (answer.result == cpb.UNKNOWN_SESSION_ID and not answer.grants
            and "belongs to another subscriber" in answer.error_message
            and not answer.charged_micros)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_another_subscriber_of_the_partition_cannot_use_a_session(
        tollgate, gateway, db, warm):
    attacker, intruder = await two_accounts(gateway, tollgate.config.partitions)
    opened = await gateway.charge(request(SESSION, 0, cpb.INITIAL, VICTIM_SUB, voice(want=0)))
    assert opened.result == cpb.SUCCESS and opened.grants[0].granted.time_seconds > 0
    if warm:
        # The attacker's account is cached: its INITIAL is not read first, and the apply
        # refuses the existing session; the re-run must refuse it too, not charge it.
        own = await gateway.charge(request("attacker-own", 0, cpb.INITIAL, intruder,
                                           voice(want=0)))
        assert own.result == cpb.SUCCESS
    before = [books(await gateway.account(a)) for a in (VICTIM, attacker)]

    answers = [await gateway.charge(r) for r in (
        request(SESSION, 0, cpb.INITIAL, intruder, voice(want=0)),  # the stored answer's rn
        request(SESSION, 1, cpb.UPDATE, intruder, voice(used=300, want=0)),
        request(SESSION, 2, cpb.TERMINATION, intruder, voice(used=300)),
        request(SESSION, 3, cpb.EVENT, intruder, mscc(SMS_RG, used=1, field="service_units")),
    )]

    assert all(refused(a) for a in answers), answers
    assert [books(await gateway.account(a)) for a in (VICTIM, attacker)] == before
    assert await usage_records(db, tollgate.config, attacker) == []
    # The victim's session is untouched: it goes on and ends normally.
    update = await gateway.charge(request(SESSION, 1, cpb.UPDATE, VICTIM_SUB,
                                          voice(used=60, want=0)))
    end = await gateway.charge(request(SESSION, 2, cpb.TERMINATION, VICTIM_SUB, voice(used=0)))
    assert (update.result, end.result) == (cpb.SUCCESS, cpb.SUCCESS)
    victim = await gateway.account(VICTIM)
    assert victim.reserved_micros == 0 and victim.money_micros == 100 * EUR - 100_000
    assert reconcile(tollgate.config.redis_url, progress=False).ok


async def test_a_retransmission_in_the_same_batch_does_not_get_the_owners_answer(
        tollgate, gateway):
    _, intruder = await two_accounts(gateway, tollgate.config.partitions)

    owner, other = await gateway.batch([
        request(SESSION, 0, cpb.INITIAL, VICTIM_SUB, voice(want=0)),
        request(SESSION, 0, cpb.INITIAL, intruder, voice(want=0))])

    assert owner.result == cpb.SUCCESS and owner.grants
    assert refused(other), other


async def test_an_event_session_answers_only_its_own_subscriber(tollgate, gateway):
    attacker, intruder = await two_accounts(gateway, tollgate.config.partitions)
    sms = mscc(SMS_RG, used=1, field="service_units")
    sent = await gateway.charge(request("sms-1", 0, cpb.EVENT, VICTIM_SUB, sms))
    assert sent.result == cpb.SUCCESS and sent.charged_micros == 50_000

    again = await gateway.charge(request("sms-1", 0, cpb.EVENT, intruder, sms))

    assert refused(again), again
    assert (await gateway.account(attacker)).money_micros == 100 * EUR


async def test_the_sweeper_gives_a_silent_session_back_to_its_own_account(tollgate, gateway):
    attacker, intruder = await two_accounts(gateway, tollgate.config.partitions)
    await gateway.charge(request(SESSION, 0, cpb.INITIAL, VICTIM_SUB, voice(want=0)))
    await gateway.charge(request(SESSION, 1, cpb.UPDATE, intruder, voice(used=60, want=0)))

    released = await Sweeper(tollgate.store, tollgate.engine.clock).sweep_once(LATER)

    assert released == 1
    for account in (VICTIM, attacker):
        assert books(await gateway.account(account)) == (100 * EUR, 0, 0)
