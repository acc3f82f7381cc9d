"""Provisioning operations: plans, accounts, subscribers and top-ups (protobuf at the edge)."""

from __future__ import annotations

import time

from engine.domain import Bucket, SubscriberState, UnitType
from engine.errors import InvalidArgument
from engine.kernels.charge import MONEY_LIMIT
from engine.plans import check_id, plan_from_proto, plan_to_proto
from engine.state import AccountState, SessionState
from engine.store import Store
from tollgate.v1 import provisioning_pb2 as pb

DAY_MS = 86_400_000


class Provisioner:
    def __init__(self, store: Store, max_id_length: int = 256) -> None:
        self.store = store
        self.max_id = max_id_length

    async def put_plan(self, msg: pb.Plan) -> pb.Plan:
        plan = plan_from_proto(msg)
        version = await self.store.put_plan(plan)
        return plan_to_proto(await self.store.get_plan(plan.plan_id, version))

    async def get_plan(self, msg: pb.GetPlanRequest) -> pb.Plan:
        check_id("plan_id", msg.plan_id, self.max_id)
        return plan_to_proto(await self.store.get_plan(msg.plan_id, msg.version))

    async def create_account(self, msg: pb.CreateAccountRequest) -> pb.Account:
        check_id("account_id", msg.account_id, self.max_id)
        check_id("plan_id", msg.plan_id, self.max_id)
        for name, v in (("initial_money_micros", msg.initial_money_micros),
                        ("credit_limit_micros", msg.credit_limit_micros)):
            if not 0 <= v <= MONEY_LIMIT // 4:
                raise InvalidArgument(f"{name} must be between 0 and {MONEY_LIMIT // 4}")
        plan = await self.store.get_plan(msg.plan_id)
        now = int(time.time() * 1000)
        buckets = [Bucket(b.bucket_id, b.rating_groups, b.unit_type, b.units, b.units,
                          priority=b.priority,
                          expiry_ms=now + b.validity_days * DAY_MS if b.validity_days else 0)
                   for b in plan.bundles]
        for n, b in enumerate(msg.buckets):
            where = f"buckets[{n}]"
            check_id(f"{where}.bucket_id", b.bucket_id, self.max_id)
            if not b.rating_groups:
                raise InvalidArgument(f"{where}.rating_groups may not be empty")
            if not 0 <= b.initial <= MONEY_LIMIT // 4:
                raise InvalidArgument(f"{where}.initial must be between 0 and {MONEY_LIMIT // 4}")
            try:
                unit = UnitType(b.unit_type)
            except ValueError:
                raise InvalidArgument(f"{where}.unit_type is not set or not known") from None
            buckets.append(Bucket(b.bucket_id, tuple(b.rating_groups), unit, b.initial,
                                  b.initial, priority=b.priority, expiry_ms=b.expiry_ms))
        if len({b.bucket_id for b in buckets}) != len(buckets):
            raise InvalidArgument("bucket ids of the account (plan bundles and extra buckets) "
                                  "must be unique")
        await self.store.create_account(msg.account_id, plan, msg.initial_money_micros,
                                        msg.credit_limit_micros, buckets)
        return await self.get_account(pb.GetAccountRequest(account_id=msg.account_id))

    async def get_account(self, msg: pb.GetAccountRequest) -> pb.Account:
        check_id("account_id", msg.account_id, self.max_id)
        acct, sessions = await self.store.get_account(msg.account_id)
        return account_to_proto(acct, sessions)

    async def create_subscriber(self, msg: pb.Subscriber) -> pb.Subscriber:
        check_id("subscriber_id", msg.subscriber_id, self.max_id)
        check_id("account_id", msg.account_id, self.max_id)
        try:
            state = SubscriberState(msg.state or SubscriberState.ACTIVE)
        except ValueError:
            raise InvalidArgument(f"state {msg.state} is not known") from None
        await self.store.create_subscriber(msg.subscriber_id, msg.account_id, state)
        return pb.Subscriber(subscriber_id=msg.subscriber_id, account_id=msg.account_id,
                             state=int(state))

    async def get_subscriber(self, msg: pb.GetSubscriberRequest) -> pb.Subscriber:
        check_id("subscriber_id", msg.subscriber_id, self.max_id)
        account_id, state = await self.store.get_subscriber(msg.subscriber_id)
        return pb.Subscriber(subscriber_id=msg.subscriber_id, account_id=account_id,
                             state=int(state))

    async def top_up(self, msg: pb.TopUpRequest) -> pb.TopUpAnswer:
        check_id("topup_id", msg.topup_id, self.max_id)
        check_id("account_id", msg.account_id, self.max_id)
        if not 0 < msg.amount_micros <= MONEY_LIMIT // 4:
            raise InvalidArgument(f"amount_micros must be between 1 and {MONEY_LIMIT // 4}")
        applied, money = await self.store.top_up(msg.topup_id, msg.account_id, msg.amount_micros)
        return pb.TopUpAnswer(applied=applied, money_micros=money)


def account_to_proto(acct: AccountState, sessions: list[SessionState]) -> pb.Account:
    return pb.Account(
        account_id=acct.account_id, plan_id=acct.plan_id, money_micros=acct.money,
        reserved_micros=acct.money_reserved, credit_limit_micros=acct.credit_limit,
        version=acct.version, partition=acct.partition,
        buckets=[pb.Bucket(bucket_id=b.bucket_id, rating_groups=list(b.rating_groups),
                           unit_type=int(b.unit_type), initial=b.initial,
                           remaining=b.remaining, reserved=b.reserved,
                           used=b.initial - b.remaining - b.reserved, priority=b.priority,
                           expiry_ms=b.expiry_ms) for b in acct.buckets],
        reservations=[pb.Reservation(session_id=s.session_id, rating_group=r.rating_group,
                                     bucket_id=r.bucket_id, units=r.units, amount=r.amount)
                      for s in sessions for r in s.reservations.values()])
