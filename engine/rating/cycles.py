"""Billing cycles: when an account's cycle is over, start the next one (spend, caps, tiers and
renewing bundles reset). Pure: it changes the cached state and says which fields to set."""

from __future__ import annotations

from tollgate.engine.domain import Plan
from tollgate.engine.storage.state import AccountState
from tollgate.engine.storage.store import DAY_MS


def renew_if_due(acct: AccountState, plan: Plan | None, now_ms: int) -> dict[str, int]:
    """The hash fields to set (empty when the cycle is still running). Applied with the
    batch's write, under the version check, so a renewal happens once."""
    if acct.cycle_end == 0 or now_ms < acct.cycle_end:
        return {}
    length = (plan.cycle_days if plan else 30) * DAY_MS
    start = acct.cycle_end
    while start + length <= now_ms:
        start += length
    sets: dict[str, int] = {"cs": start, "ce": start + length, "spent": 0, "capn": 0}
    acct.cycle_start, acct.cycle_end, acct.spent, acct.cap_level = start, start + length, 0, 0
    for rg in acct.cycle_units:
        sets[f"cu:{rg}"] = 0
    acct.cycle_units = {}
    for b in acct.buckets:
        if b.renew:
            # Units held by live reservations stay held; the rest is the new allowance.
            b.remaining = max(0, b.initial - b.reserved)
            b.notified = 0
            sets[f"b:{b.bucket_id}:rem"] = b.remaining
            sets[f"b:{b.bucket_id}:ntf"] = 0
    for sub, m in acct.members.items():
        m.spent = 0
        m.used_units = [0, 0, 0]
        sets.update({f"m:{sub}:spent": 0, f"m:{sub}:u1": 0, f"m:{sub}:u2": 0, f"m:{sub}:u3": 0})
    return sets
