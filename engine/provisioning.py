"""Provisioning operations: plans, accounts, subscribers, members, caps, top-ups and add-ons
(protobuf at the edge)."""

from __future__ import annotations

import time

from tollgate.engine.charging.kernels.charge import MONEY_LIMIT
from tollgate.engine.domain import Bucket, Plan, SubscriberState, UnitType
from tollgate.engine.errors import InvalidArgument, NotFound
from tollgate.engine.lifecycle.offers import record_purchase
from tollgate.engine.rating.plans import check_id, plan_from_proto, plan_to_proto
from tollgate.engine.storage.state import MEMBER_COUNTERS, AccountState, SessionState
from tollgate.engine.storage.store import DAY_MS, Store
from tollgate.v1 import provisioning_pb2 as pb

AMOUNT_LIMIT = MONEY_LIMIT // 4
"""The largest money amount, cap or bucket size provisioning accepts."""

BUCKET_COUNTER_SUFFIXES = (":rem", ":res", ":ntf")
"""A bucket id ending in one of these would read as a counter field of another bucket."""


def _amount(name: str, value: int) -> None:
    if not 0 <= value <= AMOUNT_LIMIT:
        raise InvalidArgument(f"{name} must be between 0 and {AMOUNT_LIMIT}")


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
                        ("credit_limit_micros", msg.credit_limit_micros),
                        ("spending_cap_micros", msg.spending_cap_micros)):
            _amount(name, v)
        plan = await self.store.get_plan(msg.plan_id)
        now = int(time.time() * 1000)
        buckets = plan_buckets(plan, now)
        for n, b in enumerate(msg.buckets):
            where = f"buckets[{n}]"
            check_id(f"{where}.bucket_id", b.bucket_id, self.max_id)
            if b.bucket_id.endswith(BUCKET_COUNTER_SUFFIXES):
                raise InvalidArgument(f"{where}.bucket_id may not end in "
                                      f"{', '.join(BUCKET_COUNTER_SUFFIXES)}")
            if not b.rating_groups:
                raise InvalidArgument(f"{where}.rating_groups may not be empty")
            _amount(f"{where}.initial", b.initial)
            try:
                unit = UnitType(b.unit_type)
            except ValueError:
                raise InvalidArgument(f"{where}.unit_type is not set or not known") from None
            buckets.append(Bucket(b.bucket_id, tuple(b.rating_groups), unit, b.initial,
                                  b.initial, priority=b.priority, expiry_ms=b.expiry_ms,
                                  renew=b.renew))
        if len({b.bucket_id for b in buckets}) != len(buckets):
            raise InvalidArgument("bucket ids of the account (plan bundles and extra buckets) "
                                  "must be unique")
        await self.store.create_account(msg.account_id, plan, msg.initial_money_micros,
                                        msg.credit_limit_micros, buckets,
                                        cap=msg.spending_cap_micros, now_ms=now)
        return await self._account(msg.account_id)

    async def get_account(self, msg: pb.GetAccountRequest) -> pb.Account:
        check_id("account_id", msg.account_id, self.max_id)
        return await self._account(msg.account_id)

    async def _account(self, account_id: str) -> pb.Account:
        acct, sessions = await self.store.get_account(account_id)
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

    async def set_subscriber_state(self, msg: pb.Subscriber) -> pb.Subscriber:
        """Sets the state (account_id in the request is ignored); a change appends a
        STATE_CHANGED event."""
        check_id("subscriber_id", msg.subscriber_id, self.max_id)
        try:
            state = SubscriberState(msg.state)
        except ValueError:
            raise InvalidArgument(f"state {msg.state} is not known; one of "
                                  f"{', '.join(s.name for s in SubscriberState)}") from None
        account_id = await self.store.set_subscriber_state(msg.subscriber_id, state)
        return pb.Subscriber(subscriber_id=msg.subscriber_id, account_id=account_id,
                             state=int(state))

    async def top_up(self, msg: pb.TopUpRequest) -> pb.TopUpAnswer:
        check_id("topup_id", msg.topup_id, self.max_id)
        check_id("account_id", msg.account_id, self.max_id)
        if not 0 < msg.amount_micros <= AMOUNT_LIMIT:
            raise InvalidArgument(f"amount_micros must be between 1 and {AMOUNT_LIMIT}")
        applied, money = await self.store.top_up(msg.topup_id, msg.account_id, msg.amount_micros)
        return pb.TopUpAnswer(applied=applied, money_micros=money)

    async def add_member(self, msg: pb.AddMemberRequest) -> pb.Account:
        """Adds the subscriber (created, ACTIVE, if new) to a shared account with its caps,
        or sets the caps of a member (0 = no cap)."""
        check_id("account_id", msg.account_id, self.max_id)
        check_id("subscriber_id", msg.subscriber_id, self.max_id)
        if ":" in msg.subscriber_id and msg.subscriber_id.rpartition(":")[2] in MEMBER_COUNTERS:
            raise InvalidArgument(f"subscriber_id {msg.subscriber_id!r} of a member may not end "
                                  f"in ':' and one of {', '.join(MEMBER_COUNTERS)}")
        c = msg.caps
        for name in ("money_micros", "octets", "seconds", "service_units"):
            _amount(f"caps.{name}", getattr(c, name))
        await self.store.add_member(msg.account_id, msg.subscriber_id, c.money_micros,
                                    [c.octets, c.seconds, c.service_units])
        return await self._account(msg.account_id)

    async def remove_member(self, msg: pb.RemoveMemberRequest) -> pb.Account:
        """Removes a member and its subscriber; refused while it holds reservations."""
        check_id("account_id", msg.account_id, self.max_id)
        check_id("subscriber_id", msg.subscriber_id, self.max_id)
        await self.store.remove_member(msg.account_id, msg.subscriber_id)
        return await self._account(msg.account_id)

    async def set_spending_cap(self, msg: pb.SetSpendingCapRequest) -> pb.Account:
        check_id("account_id", msg.account_id, self.max_id)
        _amount("cap_micros", msg.cap_micros)
        await self.store.set_spending_cap(msg.account_id, msg.cap_micros)
        return await self._account(msg.account_id)

    async def buy_add_on(self, msg: pb.BuyAddOnRequest) -> pb.BuyAddOnAnswer:
        """Buys an add-on of the account's plan (its current version) once per order id:
        the price from the money balance, the bundle as bucket `<bucket_id>:<order_id>`.
        An offer_id (from a lifecycle message) counts the offer as bought, once."""
        check_id("order_id", msg.order_id, self.max_id)
        check_id("account_id", msg.account_id, self.max_id)
        check_id("addon_id", msg.addon_id, self.max_id)
        if msg.offer_id:
            check_id("offer_id", msg.offer_id, self.max_id)
        plan = await self.store.get_plan(await self.store.account_plan(msg.account_id))
        addon = next((a for a in plan.addons if a.addon_id == msg.addon_id), None)
        if addon is None:
            raise NotFound(f"add-on {msg.addon_id!r} is not offered by plan {plan.plan_id!r} "
                           f"(version {plan.version})")
        bucket_id = f"{addon.bundle.bucket_id}:{msg.order_id}"
        if bucket_id.endswith(BUCKET_COUNTER_SUFFIXES):
            raise InvalidArgument(f"order_id {msg.order_id!r} may not end in "
                                  f"{', '.join(BUCKET_COUNTER_SUFFIXES)}")
        applied = await self.store.buy_addon(msg.order_id, msg.account_id, plan, addon)
        if msg.offer_id:
            await record_purchase(self.store.redis, msg.offer_id, addon.addon_id, msg.order_id,
                                  addon.price_micros)
        return pb.BuyAddOnAnswer(applied=applied, account=await self._account(msg.account_id))


def plan_buckets(plan: Plan, now: int) -> list[Bucket]:
    """The buckets a new account gets from its plan's bundles, full, validity from `now`."""
    return [Bucket(b.bucket_id, b.rating_groups, b.unit_type, b.units, b.units,
                   priority=b.priority,
                   expiry_ms=now + b.validity_days * DAY_MS if b.validity_days else 0,
                   renew=b.renew)
            for b in plan.bundles]


def _caps(money: int, units: list[int]) -> pb.MemberCaps:
    return pb.MemberCaps(money_micros=money, octets=units[0], seconds=units[1],
                         service_units=units[2])


def account_to_proto(acct: AccountState, sessions: list[SessionState]) -> pb.Account:
    return pb.Account(
        account_id=acct.account_id, plan_id=acct.plan_id, money_micros=acct.money,
        reserved_micros=acct.money_reserved, credit_limit_micros=acct.credit_limit,
        version=acct.version, partition=acct.partition,
        buckets=[pb.Bucket(bucket_id=b.bucket_id, rating_groups=list(b.rating_groups),
                           unit_type=int(b.unit_type), initial=b.initial,
                           remaining=b.remaining, reserved=b.reserved,
                           used=b.initial - b.remaining - b.reserved, priority=b.priority,
                           expiry_ms=b.expiry_ms, renew=b.renew) for b in acct.buckets],
        reservations=[pb.Reservation(session_id=s.session_id, rating_group=r.rating_group,
                                     bucket_id=r.bucket_id, units=r.units, amount=r.amount)
                      for s in sessions for r in s.reservations.values()],
        spending_cap_micros=acct.cap, cycle_spent_micros=acct.spent,
        cycle_start_ms=acct.cycle_start, cycle_end_ms=acct.cycle_end,
        members=[pb.Member(subscriber_id=m.subscriber_id, caps=_caps(m.cap_money, m.cap_units),
                           used=_caps(m.spent + m.money_reserved,
                                      [u + r for u, r in zip(m.used_units, m.reserved_units,
                                                             strict=True)]))
                 for _, m in sorted(acct.members.items())])
