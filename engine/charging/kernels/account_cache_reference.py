"""Plain-Python twins of kernels/account_cache.py, on the cached objects (what a batch read and
wrote before the cache had tables); used only by property tests
(tests/unit/test_account_cache.py)."""

from __future__ import annotations

from tollgate.engine.charging.kernels import account_tables as change
from tollgate.engine.storage.state import AccountState

ACCOUNT_OUTPUTS = ("money", "money_reserved", "spent", "cap_level", "low_flag",
                   "exhausted_flag")


def gathered(accts: list[AccountState], slots: list[tuple[int, int]]
             ) -> dict[str, list[list[int]] | list[list[str]]]:
    """A batch's accounts' numbers as the charging kernel reads them (gather_accounts; the
    rating groups and ids end to end), and its cycle slots' units (cycle_slots)."""
    buckets = [b for a in accts for b in a.buckets]
    members = [m for a in accts for m in a.members.values()]
    return {
        "accounts": [[a.money for a in accts], [a.money_reserved for a in accts],
                     [a.spent for a in accts], [a.cap_level for a in accts],
                     [a.low_flag for a in accts], [a.exhausted_flag for a in accts],
                     [-a.credit_limit for a in accts], [a.cap for a in accts]],
        "buckets": [[b.remaining for b in buckets], [int(b.unit_type) for b in buckets],
                    [b.expiry_ms for b in buckets], [b.initial for b in buckets],
                    [b.notified for b in buckets]],
        "reserved": [[b.reserved for b in buckets]],
        "rgs": [[g for b in buckets for g in b.rating_groups]],
        "members": [[m.cap_money for m in members], [m.spent for m in members],
                    [m.money_reserved for m in members]],
        "units": [[u for m in members for u in m.cap_units],
                  [u for m in members for u in m.used_units],
                  [u for m in members for u in m.reserved_units]],
        "cycle": [[accts[a].cycle_units.get(rg, 0) for a, rg in slots]],
        "names": [[b.bucket_id for b in buckets]]}


def keep(accts: list[AccountState], slots: list[tuple[int, int]],
         changes: list[tuple[int, int, int, int]]) -> None:
    """The charging kernel's changes (account, what, index, value) applied to the objects
    (keep_changes)."""
    buckets = [b for a in accts for b in a.buckets]
    members = [m for a in accts for m in a.members.values()]
    for a, what, i, v in changes:
        if what < change.REMAINING:
            setattr(accts[a], ACCOUNT_OUTPUTS[what], v)
        elif what == change.REMAINING:
            buckets[i].remaining = v
        elif what == change.RESERVED:
            buckets[i].reserved += v
        elif what == change.NOTIFIED:
            buckets[i].notified = v
        elif what == change.MEMBER_SPENT:
            members[i].spent = v
        elif what == change.MEMBER_MRES:
            members[i].money_reserved = v
        elif what == change.MEMBER_USED:
            members[i // 3].used_units[i % 3] = v
        elif what == change.MEMBER_RESERVED:
            members[i // 3].reserved_units[i % 3] = v
        elif what == change.CYCLE:
            owner, rating_group = slots[i]
            accts[owner].cycle_units[rating_group] = v
