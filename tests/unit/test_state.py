"""An account hash as the writers lay it out (engine/storage/state.py's docstring) parses back into
the account that was written: buckets with their counters and order, members with their caps
and use, cycle units, the fixed fields."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tollgate.engine.domain import Bucket, Member, UnitType
from tollgate.engine.storage.state import (
    NEVER,
    AccountState,
    bucket_fields,
    member_caps_value,
    parse_account,
)

ids = st.text("abcdefghij-_:.0123456789", min_size=1, max_size=8)
amounts = st.integers(0, 2**53)
units = st.lists(amounts, min_size=3, max_size=3)

buckets = st.builds(
    Bucket, bucket_id=ids, rating_groups=st.lists(st.integers(1, 999), max_size=3).map(tuple),
    unit_type=st.sampled_from(UnitType), initial=amounts, remaining=amounts, reserved=amounts,
    priority=st.integers(0, 9), expiry_ms=st.sampled_from([0, 1, 2**40]),
    renew=st.booleans(), notified=st.sampled_from([0, 50, 80, 100]))
members = st.builds(Member, subscriber_id=ids, cap_money=amounts, cap_units=units,
                    spent=amounts, money_reserved=amounts, used_units=units,
                    reserved_units=units)


@st.composite
def accounts(draw: st.DrawFn) -> AccountState:
    return AccountState(
        account_id="acct-1", partition=3, version=draw(st.integers(1, 2**40)),
        plan_id=draw(ids), money=draw(st.integers(-(2**53), 2**53)), money_reserved=draw(amounts),
        credit_limit=draw(amounts),
        buckets=draw(st.lists(buckets, max_size=4, unique_by=lambda b: b.bucket_id)),
        cap=draw(amounts), spent=draw(amounts), cycle_start=draw(amounts),
        cycle_end=draw(amounts), cap_level=draw(st.sampled_from([0, 80, 100])),
        low_flag=draw(st.integers(0, 1)), exhausted_flag=draw(st.integers(0, 1)),
        cycle_units=draw(st.dictionaries(st.integers(1, 999), amounts, max_size=3)),
        members={m.subscriber_id: m for m in draw(st.lists(members, max_size=3))})


def as_hash(a: AccountState) -> dict[bytes, bytes]:
    """The account as the writers store it (field names and values as Redis returns them)."""
    fields: dict[str, Any] = {
        "ver": a.version, "plan": a.plan_id, "money": a.money, "mres": a.money_reserved,
        "climit": a.credit_limit, "init": 7, "topups": 0, "created": 1, "cap": a.cap,
        "spent": a.spent, "cs": a.cycle_start, "ce": a.cycle_end, "capn": a.cap_level,
        "lown": a.low_flag, "exhn": a.exhausted_flag}
    for b in a.buckets:
        fields.update(bucket_fields(b))
    for sub, m in a.members.items():
        fields[f"m:{sub}"] = member_caps_value(m.cap_money, m.cap_units)
        fields |= {f"m:{sub}:spent": m.spent, f"m:{sub}:mres": m.money_reserved}
        for u in range(3):
            fields[f"m:{sub}:u{u + 1}"] = m.used_units[u]
            fields[f"m:{sub}:r{u + 1}"] = m.reserved_units[u]
    for rg, n in a.cycle_units.items():
        fields[f"cu:{rg}"] = n
    return {k.encode(): str(v).encode() for k, v in fields.items()}


@given(accounts())
def test_an_account_hash_parses_back_into_the_account(account: AccountState) -> None:
    parsed = parse_account(account.account_id, account.partition, as_hash(account))
    # Buckets come back in the order they are used in: priority, then expiry, then id.
    account.buckets.sort(key=lambda b: (b.priority, b.expiry_ms or NEVER, b.bucket_id))
    assert parsed == account


def test_counters_missing_from_the_hash_read_as_zero() -> None:
    h = {b"ver": b"4", b"plan": b"p", b"money": b"-5", b"b:data": b"10,20|1|0|0|1000|1",
         b"m:kid": b'{"money":9,"oct":0,"sec":60,"svc":0}', b"cu:10": b"12"}
    a = parse_account("acct", 0, h)
    assert (a.version, a.plan_id, a.money, a.money_reserved, a.cap, a.spent) == (
        4, "p", -5, 0, 0, 0)
    assert a.buckets == [Bucket("data", (10, 20), UnitType.OCTETS, 1000, 0, renew=True)]
    assert a.members == {"kid": Member("kid", 9, [0, 60, 0])}
    assert a.cycle_units == {10: 12}
