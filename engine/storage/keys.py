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


def account_subscribers(p: int, account_id: str) -> str:
    """Set of the subscribers provisioning created on or added to the account (one that moved
    or was removed since may stay listed: readers check the subscriber record)."""
    return f"tg:{{p{p}}}:subs:{account_id}"


def usage_stream(p: int) -> str:
    """Rated usage records: an entry holds one (`r`) or a block of them (`n`, `b`), see
    engine/storage/record_block.py."""
    return f"tg:{{p{p}}}:usage"


def events_stream(p: int) -> str:
    return f"tg:{{p{p}}}:events"


def acked(stream: str, group: str) -> str:
    """Hash of a consumer group's acknowledged records of blocks not yet acknowledged whole:
    entry id -> '1' at each record's index (engine/billing/delivery.py; the stream's slot)."""
    return f"{stream}:acked:{group}"


def open_sessions(p: int) -> str:
    """Sorted set of open session keys by the time their reservations go stale."""
    return f"tg:{{p{p}}}:open"


def carried(p: int) -> str:
    """Hash of what usage records trimmed from the stream did, per account (reconcile):
    `<account>|m` money, `<account>|t` top-ups, `<account>|b|<bucket>` bucket units."""
    return f"tg:{{p{p}}}:carried"


def usage_kept_from(p: int) -> str:
    """The id of the first usage record the trimmer kept when it last trimmed partition p's
    stream: every record before it is gone (engine/billing/retention.py)."""
    return f"tg:{{p{p}}}:usage-kept-from"


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


# --- lifecycle ------------------------------------------------------------------------------
# The message queue, timers, de-duplication markers and offers share one hash tag, {lc}, so
# the scripts that move a message between them stay within one cluster slot.

LC_OUTBOX = "tg:{lc}:outbox"
"""Sorted set of message ids by when they are (next) due to be sent."""
LC_MESSAGES = "tg:{lc}:msg"
"""Hash: message id -> the message (JSON)."""
LC_TIMERS = "tg:{lc}:timers"
"""Sorted set of timed state transitions ('<subscriber>|<target state>') by due time."""
LC_DEAD = "tg:{lc}:dead"
"""Dead-letter stream: messages that failed every attempt."""
LC_CAMPAIGN_LEASE = "tg:{lc}:campaign-lease"
"""Held by the lifecycle process that runs this interval's campaign pass."""
LC_OFFER_STATS = "tg:{lc}:offers"
"""Hash: offers made and bought (conversions), in total and per add-on."""

LC_CAMPAIGNS = "tg:{lc}:campaigns"
"""Set of the campaign names that have results (`lc_campaign`)."""
LC_SEGMENT_CAMPAIGNS = "tg:{lc}:segment-campaigns"
"""Hash: name -> JSON of each campaign a lifecycle process can send to a segment on demand
(signal "segment"), published at its start for the segments page."""
LC_SENDS = "tg:{lc}:sends"
"""Sorted set of segment sends (job ids) by when they are due, claimed under a lease."""
LC_SEND_JOBS = "tg:{lc}:send-jobs"
"""Hash: job id -> the send's request (JSON)."""
LC_SEND_LOG = "tg:{lc}:send-log"
"""List of the latest job ids, newest first (the segments page's list of sends)."""


def lc_campaign(name: str) -> str:
    """Hash: a campaign's results: reach (lines a message was queued for), offers, bought,
    revenue (micro-units), nps:<0..10> (answers by score)."""
    return f"tg:{{lc}}:campaign:{name}"


def lc_nps_answers(campaign: str) -> str:
    """Hash: subscriber -> NPS score, one answer per line and campaign."""
    return f"tg:{{lc}}:nps:{campaign}"


def lc_send(job_id: str) -> str:
    """Hash: a segment send's progress (status, queued, lines, ...)."""
    return f"tg:{{lc}}:send:{job_id}"


def lc_dedup(key: str) -> str:
    return f"tg:{{lc}}:dedup:{key}"


def lc_offer(offer_id: str) -> str:
    return f"tg:{{lc}}:offer:{offer_id}"


def lc_log(subscriber_id: str) -> str:
    """List of the subscriber's delivery log entries, newest first."""
    return f"tg:lc:log:{subscriber_id}"


def lc_prefs(subscriber_id: str) -> str:
    return f"tg:lc:prefs:{subscriber_id}"


def lc_activity(subscriber_id: str) -> str:
    """Hash: the subscriber's churn signals (engine/lifecycle/signals.py); 'last' is its last
    usage time (campaigns: inactivity)."""
    return f"tg:lc:act:{subscriber_id}"


def lc_account_subscribers(account_id: str) -> str:
    """Set of the subscribers the lifecycle has seen on an account (events, usage): with
    account_subscribers, the lines a top-up reactivates (this one also has lines that
    account_subscribers does not list: bulk populations, lines from before it)."""
    return f"tg:lc:acct:{account_id}"


def event_marker(p: int, event_id: str) -> str:
    """Marks an event the lifecycle wrote, so a retried transition writes it once."""
    return f"tg:{{p{p}}}:evmark:{event_id}"
