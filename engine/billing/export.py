"""`tollgate usage export`: rated usage records of a period to CSV or Parquet, streamed.

Records are read partition by partition with XRANGE in chunks of `chunk` entries (the period
is a range of stream entry ids, i.e. of the Unix ms at which each record was written), and
written as they come: CSV row by row, Parquet one row group per `row_group` records. Memory
stays bounded by the chunk and the row group, whatever the number of records.

Columns: `partition`, then every field of `tollgate.v1.RatedUsage` in field-number order
(`record_id` = the stream entry id, with `-<index>` for a record of a block: engine/
record_block.py; enums as their names, e.g. `USAGE`, `OCTETS`), with the
repeated `charges` flattened into three columns: `money_charged_micros` (sum of the money
charges, = `money_micros`), `bucket_units` (sum of units taken from buckets) and
`charges_json` (the full list as JSON: `[{"bucket_id": "", "units": 5, "micros": 5000}]`).
Rows are ordered by partition, then by record id (time of writing).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, cast

import redis
from google.protobuf.descriptor import FieldDescriptor

from tollgate.engine.billing.retention import retention_notes
from tollgate.engine.storage import keys, record_block, redis_client
from tollgate.v1 import usage_pb2

CHUNK = 2000
ROW_GROUP = 20_000
MAX_SEQ = 2**64 - 1


def parse_time(value: str) -> int:
    """Unix ms from digits, or from an ISO 8601 date/time (naive = UTC; `Z` accepted)."""
    v = value.strip()
    if v.lstrip("-").isdigit():
        return int(v)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither Unix milliseconds nor an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def connect(url: str) -> redis.Redis:
    return redis_client.connect(url, socket_timeout=30, socket_connect_timeout=10)


def partition_count(client: redis.Redis) -> int:
    stored = client.hget(keys.META, "partitions")
    if stored is None:
        raise ValueError("this Redis holds no Tollgate installation (tg:meta is missing)")
    return int(cast(bytes, stored))


def stream_id(rid: bytes | str) -> tuple[int, int]:
    """The stream entry id of a record's place "<ms>-<seq>[-<index in its block>]"."""
    s = rid.decode() if isinstance(rid, bytes) else rid
    ms, _, rest = s.partition("-")
    return int(ms), int(rest.partition("-")[0] or 0)


def iter_stream(client: redis.Redis, key: str, from_ms: int | None = None,
                to_ms: int | None = None, chunk: int = CHUNK, *,
                until: tuple[int, int] | None = None) -> Iterator[tuple[str, bytes]]:
    """(place, record) of one usage stream (engine/storage/record_block.py: an entry holds one
    record or a block), entry ids in [from_ms, to_ms) and <= until, oldest first, `chunk`
    entries per round trip."""
    lo = f"{from_ms}-0" if from_ms is not None and from_ms > 0 else "-"
    hi = f"{to_ms - 1}-{MAX_SEQ}" if to_ms is not None else "+"
    if until is not None and (to_ms is None or until < (to_ms - 1, MAX_SEQ)):
        hi = f"{until[0]}-{until[1]}"
    while True:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       client.xrange(key, min=lo, max=hi, count=chunk))
        for sid, fields in entries:
            yield from record_block.records(sid, fields)
        if len(entries) < chunk:
            return
        lo = "(" + entries[-1][0].decode()


def iter_records(client: redis.Redis, partitions: list[int], from_ms: int | None,
                 to_ms: int | None, account: str | None = None, chunk: int = CHUNK,
                 on_partition: Callable[[int], None] | None = None,
                 ) -> Iterator[tuple[int, usage_pb2.RatedUsage]]:
    """Records (record_id set) of the partitions, partition by partition."""
    for p in partitions:
        for rid, blob in iter_stream(client, keys.usage_stream(p), from_ms, to_ms, chunk):
            r = usage_pb2.RatedUsage.FromString(blob)
            if account is not None and r.account_id != account:
                continue
            r.record_id = rid
            yield p, r
        if on_partition is not None:
            on_partition(p)


# --- totals -------------------------------------------------------------------------------


KIND_NAMES = {v.number: v.name for v in usage_pb2.RecordKind.DESCRIPTOR.values}


@dataclass
class Totals:
    """Counts and sums of a set of records (money in micros; top-ups count negative)."""

    records: int = 0
    money_micros: int = 0
    bucket_units: int = 0
    units: int = 0
    """Units used, of USAGE records."""
    kinds: dict[str, list[int]] = field(default_factory=dict)  # kind -> [records, money]
    notes: list[str] = field(default_factory=list)
    """Said with the totals: that the period reaches before the records retained."""

    def add(self, r: usage_pb2.RatedUsage) -> None:
        self.records += 1
        self.money_micros += r.money_micros
        if r.kind == usage_pb2.USAGE:
            self.units += r.units
        self.bucket_units += sum(c.units for c in r.charges if c.bucket_id)
        k = self.kinds.setdefault(KIND_NAMES.get(r.kind, str(r.kind)), [0, 0])
        k[0] += 1
        k[1] += r.money_micros

    def merge(self, other: Totals) -> None:
        self.records += other.records
        self.money_micros += other.money_micros
        self.bucket_units += other.bucket_units
        self.units += other.units
        for name, (n, m) in other.kinds.items():
            k = self.kinds.setdefault(name, [0, 0])
            k[0] += n
            k[1] += m

    def lines(self) -> list[str]:
        out = [f"{self.records} records, money {self.money_micros} micros, "
               f"bucket units {self.bucket_units}"]
        for name in sorted(self.kinds):
            n, m = self.kinds[name]
            out.append(f"  {name:<12} {n:>10} records  {m:>18} micros")
        return out + self.notes


# --- progress -----------------------------------------------------------------------------


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, a line every few
    seconds otherwise."""

    def __init__(self, total_partitions: int, what: str, stream: IO[str] | None = None,
                 enabled: bool = True) -> None:
        self.total = max(1, total_partitions)
        self.what = what
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.done = 0
        self.records = 0
        self.started = time.monotonic()
        self.last = 0.0

    def record(self, n: int = 1) -> None:
        self.records += n
        if self.enabled and self.records % 5000 == 0:
            self.draw()

    def partition_done(self, _p: int) -> None:
        self.done += 1
        self.draw()

    def draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not (final or self.tty or now - self.last >= 5):
            return
        if self.tty and not final and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        filled = width * self.done // self.total
        rate = self.records / max(now - self.started, 1e-6)
        line = (f"{self.what} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                f" partitions, {self.records:,} records, {rate:,.0f}/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# --- columns ------------------------------------------------------------------------------


_FIELDS = [f for f in usage_pb2.RatedUsage.DESCRIPTOR.fields if f.name != "charges"]


def _arrow_type(f: FieldDescriptor) -> Any:
    import pyarrow as pa
    if f.type == FieldDescriptor.TYPE_ENUM or f.type == FieldDescriptor.TYPE_STRING:
        return pa.string()
    if f.type == FieldDescriptor.TYPE_BOOL:
        return pa.bool_()
    if f.type in (FieldDescriptor.TYPE_UINT32,):
        return pa.uint32()
    return pa.int64()


COLUMNS = (["partition"] + [f.name for f in _FIELDS]
           + ["money_charged_micros", "bucket_units", "charges_json"])


def row(p: int, r: usage_pb2.RatedUsage) -> list[Any]:
    out: list[Any] = [p]
    for f in _FIELDS:
        v = getattr(r, f.name)
        if f.type == FieldDescriptor.TYPE_ENUM:
            ev = f.enum_type.values_by_number.get(v)
            v = ev.name if ev is not None else str(v)
        out.append(v)
    out.append(sum(c.micros for c in r.charges if not c.bucket_id))
    out.append(sum(c.units for c in r.charges if c.bucket_id))
    out.append(json.dumps([{"bucket_id": c.bucket_id, "units": c.units, "micros": c.micros}
                           for c in r.charges], separators=(",", ":")))
    return out


def arrow_schema() -> Any:
    import pyarrow as pa
    return pa.schema([pa.field("partition", pa.int32())]
                     + [pa.field(f.name, _arrow_type(f)) for f in _FIELDS]
                     + [pa.field("money_charged_micros", pa.int64()),
                        pa.field("bucket_units", pa.int64()),
                        pa.field("charges_json", pa.string())])


# --- export -------------------------------------------------------------------------------


def export(redis_url: str, out: str, fmt: str = "csv", from_ms: int | None = None,
           to_ms: int | None = None, account: str | None = None, chunk: int = CHUNK,
           row_group: int = ROW_GROUP, progress: bool = True,
           progress_stream: IO[str] | None = None) -> Totals:
    """Writes the records of the period to `out`; returns their totals."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be csv or parquet, not {fmt!r}")
    client = connect(redis_url)
    try:
        n = partition_count(client)
        parts = [keys.partition_of(account, n)] if account else list(range(n))
        bar = Progress(len(parts), "export", progress_stream, progress)
        records = iter_records(client, parts, from_ms, to_ms, account, chunk,
                               bar.partition_done)
        totals = Totals(notes=retention_notes(client, parts, from_ms))
        if fmt == "csv":
            with open(out, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(COLUMNS)
                for p, r in records:
                    w.writerow(row(p, r))
                    totals.add(r)
                    bar.record()
        else:
            _parquet(out, records, totals, bar, row_group)
        bar.draw(final=True)
        return totals
    finally:
        client.close()


def _parquet(out: str, records: Iterator[tuple[int, usage_pb2.RatedUsage]], totals: Totals,
             bar: Progress, row_group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = arrow_schema()
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        cols: list[list[Any]] = [[] for _ in COLUMNS]

        def flush() -> None:
            if cols[0]:
                writer.write_table(pa.Table.from_arrays(
                    [pa.array(c, type=schema.field(k).type) for k, c in enumerate(cols)],
                    schema=schema), row_group_size=row_group)
                for c in cols:
                    c.clear()

        for p, r in records:
            for c, v in zip(cols, row(p, r), strict=True):
                c.append(v)
            totals.add(r)
            bar.record()
            if len(cols[0]) >= row_group:
                flush()
        flush()
