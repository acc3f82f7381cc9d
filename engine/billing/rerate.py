"""`tollgate rerate`: re-prices stored usage under a plan version and books the differences.

Which records: USAGE records whose stream entry id (the Unix ms at which they were written)
lies in [from, to), of one account (`--account`) and/or priced with one plan (`--plan`).
Which plan: `--plan`, else the account's current plan; `--plan-version`, else its current
version. Only the money-charged part of a record is re-priced (units taken from buckets stay
as they are), by the Numba kernel `engine.charging.kernels.rerate` with the charging kernel's
pricing functions: increments, time windows (in the plan's local time), tiers. For tiers the
position in the billing cycle is replayed from the account's records of the same rating group and
cycle (cycles of the plan's length counted from the account's creation; records of the cycle before
`from` are read for the position only).

What is written, per account, in one atomic Lua call per chunk (engine/storage/lua/adjust.lua): an
ADJUSTMENT record per re-priced record whose price changed (money_micros = new - old, where
old is the record's effective price: its own, or the one of its last re-rate;
`adjusts_record_id` = the original record id; `plan_id`/`rerated_plan_version` = the plan
version used), `money -= delta`, `ver + 1` (caches reload), and markers in
`tg:{pN}:rerate:<account>`: `<record id>` = its effective price, `<record id>@<plan>:<version>`
= done. A record already re-rated with that plan version is left alone, so running the same
re-rate again is a no-op. Records are never edited in place. The cycle's spend (`spent`, the
spending cap) is not changed: the cap counts what was charged at the time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any, cast

import numpy as np
import redis

from tollgate.engine.billing.export import (
    CHUNK,
    Progress,
    connect,
    iter_stream,
    partition_count,
    stream_id,
)
from tollgate.engine.billing.retention import retention_notes
from tollgate.engine.charging.batch import local_offset_ms
from tollgate.engine.charging.kernels.charge import R_FEE
from tollgate.engine.charging.kernels.rerate import OVERFLOW, UNRATED, rerate_kernel
from tollgate.engine.domain import Plan, Rate
from tollgate.engine.rating.plans import RateTable, plan_from_proto, rate_row
from tollgate.engine.storage import keys
from tollgate.engine.storage.store import LUA
from tollgate.v1 import provisioning_pb2 as ppb
from tollgate.v1 import usage_pb2

DAY_MS = 86_400_000
APPLY_CHUNK = 500
RETRIES = 5
ADJUST_LUA = (LUA / "adjust.lua").read_text()


def marker_key(p: int, account_id: str) -> str:
    """Hash of an account's re-rate markers (same partition tag as the account)."""
    return f"tg:{{p{p}}}:rerate:{account_id}"


@dataclass
class RerateReport:
    plan_id: str = ""
    plan_version: int = 0
    scanned: int = 0
    """Records read in the period (every kind)."""
    candidates: int = 0
    """USAGE records selected with a money-charged part."""
    already: int = 0
    """Re-rated with this plan version before: left alone."""
    unchanged: int = 0
    """Same price under this version: marked, no record."""
    adjustments: int = 0
    """ADJUSTMENT records written."""
    unrated: int = 0
    """No rate for the record's rating group/zone/unit type in this version: left alone."""
    overflow: int = 0
    delta_micros: int = 0
    """Sum of the adjustments written (new - old)."""
    old_micros: int = 0
    new_micros: int = 0
    """Effective prices before and after, of the records re-rated in this run."""
    by_account: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """That the period reaches before the records retained (engine/billing/retention.py)."""
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would write" if self.dry_run else "wrote"
        out = [f"plan {self.plan_id} version {self.plan_version}: {self.scanned} records read, "
               f"{self.candidates} usage records with money charged",
               f"{verb} {self.adjustments} adjustments, total {self.delta_micros} micros "
               f"(old {self.old_micros}, new {self.new_micros}); {self.unchanged} unchanged, "
               f"{self.already} already re-rated with this version, {self.unrated} without "
               f"a rate, {self.overflow} beyond int64"]
        out += [f"  {a}: {d:+d} micros" for a, d in sorted(self.by_account.items())]
        out += self.problems
        return out + self.notes


@dataclass
class _Item:
    rid: str
    record: usage_pb2.RatedUsage | None  # None: read for the tier position only
    units: int
    row: int
    start: int
    end: int
    slot: int


def load_plan(client: redis.Redis, plan_id: str, version: int = 0) -> Plan:
    key = keys.plan(plan_id)
    if version == 0:
        version = int(cast(bytes, client.hget(key, "cur") or b"0"))
    blob = client.hget(key, f"v:{version}") if version else None
    if blob is None:
        raise ValueError(f"plan {plan_id!r} version {version or 'current'} does not exist")
    return plan_from_proto(ppb.Plan.FromString(cast(bytes, blob)), version)


def _money_part(r: usage_pb2.RatedUsage) -> int:
    """Units charged to money (the rest came from buckets)."""
    return sum(c.units for c in r.charges if not c.bucket_id)


def rerate(redis_url: str, *, account: str | None = None, plan_id: str | None = None,
           from_ms: int | None = None, to_ms: int | None = None, plan_version: int = 0,
           chunk: int = CHUNK, apply_chunk: int = APPLY_CHUNK, dry_run: bool = False,
           progress: bool = True, progress_stream: IO[str] | None = None) -> RerateReport:
    if not account and not plan_id:
        raise ValueError("give an account, a plan, or both")
    client = connect(redis_url)
    try:
        n_parts = partition_count(client)
        if plan_id is None:
            assert account is not None
            found = client.hget(keys.account(keys.partition_of(account, n_parts), account),
                                "plan")
            if found is None:
                raise ValueError(f"account {account!r} does not exist")
            plan_id = cast(bytes, found).decode()
        plan = load_plan(client, plan_id, plan_version)
        table = RateTable()
        rows = table.rows(plan)
        rates = table.arrays()
        report = RerateReport(plan_id=plan.plan_id, plan_version=plan.version, dry_run=dry_run)
        tiers = any(r.tiers for r in plan.rates)
        cycle_ms = plan.cycle_days * DAY_MS
        parts = [keys.partition_of(account, n_parts)] if account else list(range(n_parts))
        report.notes = retention_notes(client, parts, from_ms)
        bar = Progress(len(parts), "rerate", progress_stream, progress)
        script = client.register_script(ADJUST_LUA)
        for p in parts:
            items = _read(client, p, plan, rows, account, from_ms, to_ms, tiers, cycle_ms,
                          chunk, report, bar)
            if items:
                _price_and_apply(client, script, p, plan, items, rates, report, apply_chunk,
                                 dry_run)
            bar.partition_done(p)
        bar.draw(final=True)
        return report
    finally:
        client.close()


def _read(client: redis.Redis, p: int, plan: Plan, rows: dict[tuple[int, str], int],
          account: str | None, from_ms: int | None, to_ms: int | None, tiers: bool,
          cycle_ms: int, chunk: int, report: RerateReport, bar: Progress) -> list[_Item]:
    """The partition's selected records in order (and, for tiers, the earlier records of
    their cycles, for the position only)."""
    scan_from = from_ms
    if tiers and from_ms is not None:
        scan_from = max(0, from_ms - cycle_ms)
    created: dict[str, int] = {}
    slots: dict[tuple[str, int, int], int] = {}
    items: list[_Item] = []
    unit_of = {i: int(plan.rates[k].unit_type) for k, i in enumerate(rows.values())}
    for rid, blob in iter_stream(client, keys.usage_stream(p), scan_from, to_ms, chunk):
        r = usage_pb2.RatedUsage.FromString(blob)
        in_period = from_ms is None or stream_id(rid)[0] >= from_ms
        if in_period:
            report.scanned += 1
            bar.record()
        if r.kind != usage_pb2.USAGE or (account is not None and r.account_id != account):
            continue
        if r.plan_id != plan.plan_id and (account is None or not in_period):
            continue  # --plan: records priced with that plan; positions: same plan only
        units = _money_part(r)
        if units <= 0 and not r.connect_fee_micros:
            continue
        row = rate_row(rows, plan, r.rating_group, r.zone)
        if row >= 0 and unit_of[row] != r.unit_type:
            row = -1
        a = r.account_id
        if tiers and a not in created:
            h = client.hget(keys.account(p, a), "created")
            created[a] = int(cast(bytes, h)) if h is not None else 0
        cycle = (r.end_time_ms - created.get(a, 0)) // cycle_ms if tiers else 0
        slot = slots.setdefault((a, r.rating_group, cycle), len(slots))
        offset = local_offset_ms(plan.timezone, r.end_time_ms)
        if in_period:
            report.candidates += 1
            r.record_id = rid
        items.append(_Item(rid, r if in_period else None, units, row,
                           min(r.start_time_ms, r.end_time_ms) + offset,
                           r.end_time_ms + offset, slot))
    return items


def _price_and_apply(client: redis.Redis, script: Any, p: int, plan: Plan, items: list[_Item],
                     rates: tuple[np.ndarray, ...], report: RerateReport, apply_chunk: int,
                     dry_run: bool) -> None:
    def col(name: str) -> np.ndarray:
        return np.array([getattr(it, name) for it in items], dtype=np.int64)

    n_slots = max(it.slot for it in items) + 1
    prices, _ = rerate_kernel(col("units"), col("row"), col("start"), col("end"), col("slot"),
                              np.array([it.record is not None for it in items], dtype=np.int64),
                              np.zeros(n_slots, dtype=np.int64), rates)
    fee_of = rates[0][R_FEE].tolist()  # a record that paid a connect fee pays the new one
    per_account: dict[str, list[tuple[_Item, int]]] = {}
    for it, price in zip(items, prices.tolist(), strict=True):
        if it.record is None:
            continue
        if price == UNRATED:
            report.unrated += 1
        elif price == OVERFLOW:
            report.overflow += 1
        elif price >= 0:
            if it.record.connect_fee_micros:
                price += fee_of[it.row]
            per_account.setdefault(it.record.account_id, []).append((it, price))
    for a, todo in per_account.items():
        for k in range(0, len(todo), apply_chunk):
            _apply(client, script, p, plan, a, todo[k:k + apply_chunk], report, dry_run)


def _adjustment(r: usage_pb2.RatedUsage, plan: Plan, rate: Rate, delta: int, units: int
                ) -> bytes:
    return usage_pb2.RatedUsage(
        kind=usage_pb2.ADJUSTMENT, account_id=r.account_id, subscriber_id=r.subscriber_id,
        session_id=r.session_id, request_number=r.request_number, rating_group=r.rating_group,
        service_id=r.service_id, zone=r.zone, unit_type=r.unit_type, units=units,
        start_time_ms=r.start_time_ms, end_time_ms=r.end_time_ms, plan_id=plan.plan_id,
        plan_version=plan.version, price_micros=rate.price_micros,
        increment=rate.increment, money_micros=delta,
        charges=[usage_pb2.BalanceCharge(micros=delta)], origin="rerate",
        adjusts_record_id=r.record_id, rerated_plan_version=plan.version).SerializeToString()


def _apply(client: redis.Redis, script: Any, p: int, plan: Plan, account_id: str,
           todo: list[tuple[_Item, int]], report: RerateReport, dry_run: bool) -> None:
    mkey = marker_key(p, account_id)
    done_suffix = f"@{plan.plan_id}:{plan.version}"
    for _ in range(RETRIES):
        fields: list[str] = []
        for it, _price in todo:
            fields += (it.rid, it.rid + done_suffix)
        stored = cast(list[bytes | None], client.hmget(mkey, fields))
        args: list[str | bytes | int] = []
        n = 0
        tally = [0, 0, 0, 0, 0]  # already, unchanged, written, old, new
        deltas: list[int] = []
        for k, (it, new) in enumerate(todo):
            eff_raw, done = stored[2 * k], stored[2 * k + 1]
            if done is not None:
                tally[0] += 1
                continue
            assert it.record is not None
            old = int(eff_raw) if eff_raw is not None else it.record.money_micros
            delta = new - old
            # A priced item has a row; rows of a table holding one plan index plan.rates.
            blob = (_adjustment(it.record, plan, plan.rates[it.row], delta, it.units)
                    if delta else b"")
            args += (it.rid, it.rid + done_suffix, eff_raw or b"", new, -delta, blob)
            n += 1
            tally[1 if delta == 0 else 2] += 1
            tally[3] += old
            tally[4] += new
            deltas.append(delta)
        if n and not dry_run:
            reply = script(keys=[keys.account(p, account_id), mkey, keys.usage_stream(p)],
                           args=[n, *args])
            code = int(reply[0])
            if code == -2:
                continue  # another re-rate moved these records meanwhile: read again
            if code == -1:
                report.problems.append(f"{account_id}: account does not exist")
                return
        report.already += tally[0]
        report.unchanged += tally[1]
        report.adjustments += tally[2]
        report.old_micros += tally[3]
        report.new_micros += tally[4]
        total = sum(deltas)
        report.delta_micros += total
        if total or tally[2]:
            report.by_account[account_id] = report.by_account.get(account_id, 0) + total
        return
    report.problems.append(f"{account_id}: gave up after {RETRIES} tries (concurrent re-rates)")
