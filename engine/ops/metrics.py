"""Prometheus metrics of the hot path, served on `metrics_port` (0 = off)."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from tollgate.engine.errors import ConfigError
from tollgate.v1 import charging_pb2 as pb

log = logging.getLogger("tollgate.metrics")
TYPE_NAMES = {v: k.lower() for k, v in pb.RequestType.items() if v}
RESULT_NAMES = {v: k.lower() for k, v in pb.ResultCode.items() if v}

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015,
                   0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("tollgate_requests", "Charging requests answered, by type and result",
                   ["type", "result"])
ANSWER_SECONDS = Histogram("tollgate_answer_seconds",
                           "From a charging message's arrival to its answer (one observation "
                           "per call or stream message), by API: unary (Charge), batch "
                           "(ChargeBatch), stream (ChargeStream), diameter (a CCR)", ["api"],
                           buckets=LATENCY_BUCKETS)
ANSWERED = {api: ANSWER_SECONDS.labels(api) for api in ("unary", "batch", "stream", "diameter")}
BATCH_SIZE = Histogram("tollgate_batch_size", "Requests per micro-batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
GRANTS = Counter("tollgate_grants", "Grants in charging answers (a request's rating groups), "
                 "by result", ["result"])
KERNEL_SECONDS = Histogram("tollgate_kernel_seconds", "Time in the charging kernel per batch",
                           buckets=LATENCY_BUCKETS)
LOAD_SECONDS = Histogram("tollgate_redis_load_seconds", "Redis read round trip per batch",
                         buckets=LATENCY_BUCKETS)
APPLY_SECONDS = Histogram("tollgate_redis_apply_seconds", "Redis apply round trip per batch",
                          buckets=LATENCY_BUCKETS)
CONFLICTS = Counter("tollgate_version_conflicts",
                    "Account writes refused by the version check and run again")
STALE_READS = Counter("tollgate_stale_accounts_read",
                      "Cached accounts read again because another server had written them "
                      "(checked with the batch's reads while other writers show)")
WAITED = Counter("tollgate_requests_waited",
                 "Requests put back for a later batch because a batch being prepared or applied "
                 "holds their account (the other lane's, or one whose writes are not sent yet), "
                 "or one in flight has a request of their session")
CHAINED = Counter("tollgate_requests_chained",
                  "Requests charged on the outcome a batch in flight predicts for their account "
                  "(their write applies only if that batch's did)")
USAGE_PAST_RETENTION = Gauge(
    "tollgate_usage_unacked_past_retention",
    "Usage records older than usage_retention_days that a consumer group has not "
    "acknowledged: kept for it (not trimmed) until it does", ["group"])
QUEUED = Gauge("tollgate_queued_requests", "Requests waiting for a batch")
STREAM_IN_FLIGHT = Gauge("tollgate_stream_requests_in_flight",
                         "ChargeStream requests submitted whose answers gRPC has not taken yet "
                         "(each stream at most stream_max_in_flight)")
DIAMETER_IN_FLIGHT = Gauge("tollgate_diameter_requests_in_flight",
                           "CCRs handed to the engine whose CCA is not written yet (each "
                           "Diameter connection at most stream_max_in_flight)")
DIAMETER_PEERS = Gauge("tollgate_diameter_peers", "Diameter connections past CER/CEA")
REDIRECTS = Counter("tollgate_partitions_resent",
                    "Partition applies sent again: MOVED/ASK/TRYAGAIN while slots move, or a "
                    "node lost to a failover (Redis Cluster)")
BATCH_ERRORS = Counter("tollgate_batch_errors", "Batches answered UNABLE_TO_COMPLY after an "
                                                "error (usually Redis unreachable)")


_REQUEST_CHILDREN: dict[tuple[int, int], Any] = {}
"""The labelled counter of each (type, result): labels() costs about as much as the rest."""
_GRANT_CHILDREN: dict[int, Counter] = {}
SMALL_COUNT = 64
"""Grant results of a batch up to this many are counted in Python (count_grants)."""


def count(types: Sequence[int], results: Sequence[int], started: float | None = None,
          api: str = "unary") -> None:
    """Counts a message's requests by (type as sent, result) and, given the message's
    arrival (time.perf_counter()), its answer latency (ANSWERED's `api`)."""
    if started is not None:
        ANSWERED[api].observe(time.perf_counter() - started)
    # Counted per message first: a labelled increment per request costs more than the rest
    # (a unary call, the usual message of one, skips the Counter).
    if len(types) == 1:
        seen: dict[tuple[int, int], int] = {(types[0], results[0]): 1}
    else:
        seen = collections.Counter(zip(types, results, strict=True))
    for key, n in seen.items():
        child = _REQUEST_CHILDREN.get(key)
        if child is None:
            child = _REQUEST_CHILDREN[key] = REQUESTS.labels(
                TYPE_NAMES.get(key[0], "invalid"), RESULT_NAMES.get(key[1], str(key[1])))
        child.inc(n)


def count_grants(results: np.ndarray) -> None:
    """Counts a batch's grants by result (a few labelled increments per batch)."""
    # np.unique costs about 15 µs however small the batch; a small one (unary calls) is
    # counted in Python.
    if len(results) <= SMALL_COUNT:
        seen: dict[int, int] = collections.Counter(results.tolist())
    else:
        values, counts = np.unique(results, return_counts=True)
        seen = dict(zip(values.tolist(), counts.tolist(), strict=True))
    for result, n in seen.items():
        child = _GRANT_CHILDREN.get(result)
        if child is None:
            child = _GRANT_CHILDREN[result] = GRANTS.labels(RESULT_NAMES.get(result,
                                                                             str(result)))
        child.inc(n)


def serve_metrics(port: int, host: str) -> WSGIServer | None:
    """Starts the /metrics endpoint on host:port (None when port is 0). A port that cannot
    be bound is a ConfigError: a server without the metrics it was configured with would
    be noticed only when its alerts stay silent."""
    if not port:
        return None
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {e.strerror or e} "
                          f"(set metrics_port to a free port, or 0 for no metrics)") from e
    log.info("metrics endpoint started", extra={"host": host, "port": port})
    return server
