"""A minimal billing system: consumes Tollgate's rated usage, writes it to CSV, acknowledges.

    python examples/billing_client.py --address localhost:50051 --group my-billing \
        --consumer worker-1 --out usage.csv

Delivery is at least once: a record is acknowledged only after it is written (and flushed),
so a crash between the two means it comes again; the record id is stable, so the billing
system drops a record id it already has. Several copies with the same --group and different
--consumer names share the work. Ctrl-C stops it. A server with tokens or TLS: set
TOLLGATE_CLIENT_TOKEN (a billing token) and TOLLGATE_CLIENT_CA (and TOLLGATE_CLIENT_CERT /
TOLLGATE_CLIENT_KEY for mutual TLS).
"""

from __future__ import annotations

import argparse
import csv
import sys
from typing import TextIO

from tollgate.engine.ops.security import ClientSettings
from tollgate.v1 import billing_pb2 as bpb
from tollgate.v1 import billing_pb2_grpc, usage_pb2

COLUMNS = ("record_id", "kind", "account_id", "subscriber_id", "session_id", "request_number",
           "rating_group", "zone", "units", "start_time_ms", "end_time_ms", "plan_id",
           "plan_version", "money_micros", "overage")


def row(r: usage_pb2.RatedUsage) -> list[object]:
    return [r.record_id, usage_pb2.RecordKind.Name(r.kind), r.account_id, r.subscriber_id,
            r.session_id, r.request_number, r.rating_group, r.zone, r.units, r.start_time_ms,
            r.end_time_ms, r.plan_id, r.plan_version, r.money_micros, r.overage]


def consume(address: str, group: str, consumer: str, out: TextIO, limit: int = 0) -> int:
    """Runs until Ctrl-C (or `limit` records); returns the number of records written."""
    writer = csv.writer(out)
    if not out.seekable() or out.tell() == 0:
        writer.writerow(COLUMNS)
    written = 0
    client = ClientSettings.from_env()
    with client.channel(address) as channel:
        billing = billing_pb2_grpc.BillingStub(channel)
        stream = billing.StreamRatedUsage(bpb.StreamRequest(group=group, consumer=consumer),
                                          metadata=client.metadata())
        try:
            for batch in stream:
                for record in batch.records:
                    writer.writerow(row(record))
                out.flush()  # written first, then acknowledged
                billing.Ack(bpb.AckRequest(group=group,
                                           record_ids=[r.record_id for r in batch.records]),
                            metadata=client.metadata())
                written += len(batch.records)
                if limit and written >= limit:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            stream.cancel()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", default="localhost:50051")
    ap.add_argument("--group", default="billing", help="the billing system's consumer group")
    ap.add_argument("--consumer", default="worker-1", help="this consumer's name in the group")
    ap.add_argument("--out", default="-", help="CSV file to append to ('-' = stdout)")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many records")
    args = ap.parse_args()
    if args.out == "-":
        n = consume(args.address, args.group, args.consumer, sys.stdout, args.limit)
    else:
        with open(args.out, "a", newline="") as f:
            n = consume(args.address, args.group, args.consumer, f, args.limit)
    print(f"{n} records written and acknowledged", file=sys.stderr)


if __name__ == "__main__":
    main()
