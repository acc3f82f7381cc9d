"""Redis key names and the stable account -> partition hash (one partition = one cluster slot)."""

from __future__ import annotations

import zlib


def partition_of(account_id: str, partitions: int) -> int:
    # crc32 is stable across processes and Python versions (unlike hash()).
    return zlib.crc32(account_id.encode()) % partitions


def account(p: int, account_id: str) -> str:
    return f"tg:{{p{p}}}:acct:{account_id}"


SESSIONS_SUFFIX = ":sessions"


def account_sessions(p: int, account_id: str) -> str:
    """Set of the account's open session ids (for live reservations and the sweeper)."""
    return account(p, account_id) + SESSIONS_SUFFIX


def session(p: int, session_id: str) -> str:
    return f"tg:{{p{p}}}:sess:{session_id}"


def usage_stream(p: int) -> str:
    return f"tg:{{p{p}}}:usage"


def events_stream(p: int) -> str:
    return f"tg:{{p{p}}}:events"


def open_sessions(p: int) -> str:
    """Sorted set of open session keys by the time their reservations go stale."""
    return f"tg:{{p{p}}}:open"


def carried(p: int) -> str:
    """Hash of what usage records trimmed from the stream did, per account (reconcile):
    `<account>|m` money, `<account>|t` top-ups, `<account>|b|<bucket>` bucket units."""
    return f"tg:{{p{p}}}:carried"


def topup_marker(p: int, account_id: str, topup_id: str) -> str:
    """Top-up ids are per account: the same id on two accounts is two top-ups."""
    return f"tg:{{p{p}}}:topup:{account_id}:{topup_id}"


def order_marker(p: int, account_id: str, order_id: str) -> str:
    """Add-on order ids are per account, like top-up ids."""
    return f"tg:{{p{p}}}:order:{account_id}:{order_id}"


def subscriber(subscriber_id: str) -> str:
    return f"tg:sub:{subscriber_id}"


def plan(plan_id: str) -> str:
    return f"tg:plan:{plan_id}"


SUBSCRIBER_CHANGES = "tg:subscriber-changes"
"""Pub/sub channel: a subscriber id whose account or state changed (servers drop it from
their caches)."""

META = "tg:meta"
"""Install-wide settings fixed at first start (the partition count)."""
