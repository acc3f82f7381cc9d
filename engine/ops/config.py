"""Configuration in one place: a frozen dataclass from a TOML file plus environment overrides."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tollgate.engine.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting with its default. Environment: TOLLGATE_<NAME> (and REDIS_URL)."""

    listen: str = "127.0.0.1:50051"
    """gRPC address to bind (host:port; port 0 picks a free one)."""
    workers: int = 1
    """Server processes sharing the listen port (SO_REUSEPORT) under a supervisor that
    restarts a worker that dies; each has its own batcher (`tollgate serve --workers N`)."""
    grpc_listeners: int = 4
    """gRPC servers in each process, all on the listen port (SO_REUSEPORT); the kernel spreads
    connections over them. grpc.aio takes in one new call per server per event-loop turn, and
    a batch's CPU work makes turns long: one server let in too few unary calls for the
    batcher to join (batches of about 4 with 64 calls in flight)."""
    redis_url: str = ""
    """Redis to use; empty = start an embedded redis-server with AOF in data_dir."""
    data_dir: str = "./tollgate-data"
    """Where the embedded redis-server keeps its AOF."""
    appendfsync: str = "everysec"
    """Embedded Redis AOF fsync: 'always' loses nothing; 'everysec' up to one second."""
    partitions: int = 64
    """Number of partitions; fixed at first start of an installation."""
    max_batch: int = 1024
    """Most requests in one micro-batch; requests that run again (their account moved, or
    they waited for the batch in flight) go beside them, up to an eighth more."""
    shared_batch: int = 64
    """Most requests in one bulk micro-batch (a stream's, a ChargeBatch's of more than
    shared_batch / 8 requests) while small callers (a unary Charge, a small ChargeBatch) come:
    their batches are prepared and applied in a lane of their own, between the bulk batch's
    steps, so this bounds how long such a step holds the event loop, at some of the bulk
    callers' throughput (docs/stream-soak.md). 0 = max_batch always."""
    batch_window_ms: float = 1.0
    """How long the idle small calls' lane (unary Charge, calls of a few requests) waits for
    more before flushing; a larger call or a stream's message starts a batch at once."""
    max_queue: int = 100_000
    """Requests waiting for a batch before new ones are refused (backpressure)."""
    answer_retention_s: int = 3600
    """How long an ended session (and an event) keeps its answers for retransmissions."""
    answers_kept: int = 4
    """How many recent answers an open session keeps for retransmissions."""
    default_validity_s: int = 3600
    """How long an open session's reservations live when its grants carry no validity."""
    stale_grace_s: int = 60
    """Extra time past validity before the sweeper releases a silent session's reservations."""
    sweep_interval_s: float = 5.0
    """How often the stale-reservation sweeper runs (0 = never, e.g. another process does)."""
    account_cache_size: int = 200_000
    """Accounts (with their sessions) cached in process, validated by version on apply."""
    subscriber_cache_s: float = 60.0
    """How long a subscriber -> (account, state) lookup is cached. Changes reach every server
    at once through pub/sub; this bounds staleness should that channel miss one."""
    plan_refresh_s: float = 1.0
    """How often the current version of a cached plan is checked."""
    max_requests_per_call: int = 10_000
    """Most requests in one ChargeBatch / ChargeStream message."""
    stream_max_in_flight: int = 4096
    """Most requests of one ChargeStream submitted but not answered back yet (an answer
    counts until gRPC takes it, which it does only as the client reads). Past it the stream
    stops reading, so gRPC flow control holds the client back; a message counts at least 1,
    and one larger than this runs alone. Bounds a stream's memory: a client that sends fast
    and never reads cannot pile up answers. Streams together queue at most 2 x max_batch
    requests for a batch; past that their readers wait too (engine/charging/batcher.py)."""
    stream_max_rate: float = 0.0
    """Most requests a second one ChargeStream may send, on average (a second's worth at
    once); past it the stream stops reading, so gRPC flow control holds the client back.
    An operator's policy, for a server that bulk streams would otherwise keep saturated
    (docs/stream-soak.md); 0 = no limit."""
    stream_stall_s: float = 30.0
    """A ChargeStream whose client takes none of its answers for this long (its window then
    fills, and nothing more of it runs) is ended with RESOURCE_EXHAUSTED. HTTP/2 delivers
    the status after the answers before it: the client sees it when it reads again.
    0 = never."""
    max_units_per_request: int = 64
    """Most rating groups (MSCC) in one request."""
    max_id_length: int = 256
    """Longest session, subscriber, account, plan or bucket id."""
    max_units: int = 2**50
    """Largest unit count accepted in one report or request (about 1 PiB)."""
    event_time_past_s: int = 86_400
    """How far before the server's clock a request's event_time_ms may lie. An older time
    would price usage at a past tariff window; the gateway's own clock is not trusted."""
    event_time_future_s: int = 300
    """How far after the server's clock a request's event_time_ms may lie (clock skew)."""
    redis_timeout_s: float = 5.0
    """Deadline of one Redis round trip outside the charging path (provisioning, billing,
    the sweeper), of connecting, and of resending partitions while slots move. The
    charging path's round trips are bounded by request_deadline_s instead."""
    redis_wait_replicas: int = 0
    """After each batch's writes, WAIT until this many replicas of each written node have
    them before answering (0 = don't wait: a failover may lose the last writes)."""
    redis_wait_timeout_ms: int = 1000
    """How long that WAIT may take; fewer acks then fail the batch (UNABLE_TO_COMPLY)."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM: how long in-flight batches may take to finish."""
    gc_threshold: int = 50_000
    """Allocations between young-generation garbage collections (Python's default, 700,
    makes the collector rescan the caches so often that it costs about a third of the CPU
    of charging). 0 keeps Python's defaults."""
    metrics_port: int = 9464
    """Prometheus /metrics port (0 = off); one that cannot be bound stops the start."""
    metrics_host: str = ""
    """Address the /metrics endpoint binds to; empty = the host of `listen` (so metrics are
    exposed no wider than gRPC)."""
    log_level: str = "INFO"
    log_format: str = "json"
    """'json' (one object per line) or 'text'."""
    log_sensitive: bool = False
    """Show subscriber ids and secrets in logs (debugging only; masked by default)."""
    request_deadline_s: float = 5.0
    """Longest a charging request waits for its answer (queue and Redis included); past it
    the answer is UNABLE_TO_COMPLY, and a request still queued is never applied."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest gRPC message the server accepts (grpc.max_receive_message_length)."""
    tls_cert: str = ""
    """PEM certificate chain of the gRPC port; with tls_key, the port speaks TLS only."""
    tls_key: str = ""
    """PEM private key of tls_cert."""
    tls_client_ca: str = ""
    """PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."""
    tokens_file: str = ""
    """Bearer tokens file (`tollgate token create`); empty = no authentication."""
    billing_redeliver_ms: int = 30_000
    """Billing: a delivered record not acknowledged within this time is delivered again
    (to any live consumer of its group: this is how a dead consumer's records move on)."""
    billing_max_batch: int = 500
    """Billing: records per StreamRatedUsage / StreamEvents message when the client gives none
    (also the most a client may ask for, times 10)."""
    billing_block_ms: int = 1000
    """Billing: how long a stream waits in Redis for new records before looking again."""
    billing_page_size: int = 1000
    """Billing: GetUsage records per page when the client gives none (most: 10x this)."""
    stream_trim_interval_s: float = 60.0
    """How often usage and event streams are trimmed up to what every consumer group has
    acknowledged (0 = never, e.g. another process does). Streams without a group are kept."""
    stream_max_age_s: int = 30 * 86_400
    """Event streams' safety net: events older than this are dropped even when not
    acknowledged (counted in tollgate_usage_dropped_unacked_total); 0 = keep them until
    acknowledged. Usage streams have no such net: see usage_retention_days."""
    usage_retention_days: int = 35
    """Rated usage records are kept at least this long (a billing cycle plus margin: export,
    rerate and a new billing group read them), and beyond it until every registered consumer
    group has acknowledged them: one that falls behind is warned about
    (tollgate_usage_unacked_past_retention), never trimmed past."""

    http_listen: str = ""
    """Address (host:port) of the web pages: the operator's dashboard, customer care's
    subscriber view and the subscribers' self-service links (engine/web); empty = off. Uses
    tls_cert / tls_key when they are set; operators log in with a token of tokens_file."""
    http_census_s: float = 300.0
    """How often the base is counted by lifecycle state and scored for churn risk (the
    segments page's index): a background SCAN of the subscribers, never on a page load, by
    one process at a time: whichever web server (http_listen), or lifecycle process with
    lifecycle.census_s, takes the interval's lease. 0 keeps this server out (on a big base,
    so a lifecycle process does it). About 0.15 ms of CPU a line (docs/live-view.md)."""
    self_link_days: int = 14
    """How long a subscriber's self-service link stays valid."""
    dashboard_interval_s: float = 1.0
    """How often each process adds its counters to the dashboard's series in Redis (0 = never;
    the dashboard then shows nothing of this process)."""
    diameter_listen: str = ""
    """Diameter Gy address to bind (host:port, usually port 3868; port 0 picks a free one);
    empty = no Diameter front (`tollgate serve --diameter HOST:PORT`)."""
    diameter_origin_host: str = ""
    """Tollgate's Origin-Host (DiameterIdentity); empty = the machine's fully qualified name."""
    diameter_origin_realm: str = ""
    """Tollgate's Origin-Realm; empty = the Origin-Host less its first label."""
    diameter_peers: tuple[str, ...] = ()
    """Gateways allowed to connect: each an Origin-Host, or ORIGIN-HOST@ADDRESS to accept it
    only from that source address (repeat the host for several); "*" = any peer. A string is
    split at commas. Required when diameter_listen is set."""
    diameter_subscription_id_type: str = "e164"
    """Which Subscription-Id of a CCR is the Tollgate subscriber id, as sent: e164, imsi,
    sip_uri, nai or private."""
    diameter_zones: tuple[str, ...] = ()
    """Rating zone by the serving network's 3GPP-SGSN-MCC-MNC (in Service-Information /
    PS-Information or at the top of a CCR): entries MCCMNC=ZONE, MCC=ZONE (any network of
    that country) or *=ZONE (any other); the longest match wins, ZONE may be empty (home).
    No match, or no such AVP: the home zone."""
    diameter_tls: bool = False
    """The Diameter port speaks TLS only (RFC 6733 TLS/TCP, usually port 5658), with the
    certificate settings of gRPC: tls_cert, tls_key, and tls_client_ca to require gateways'
    certificates."""
    diameter_watchdog_s: float = 30.0
    """Tw (RFC 3539): a connection silent this long gets a DWR, and is closed when still
    silent as long again; also how long a new connection may take to send its CER."""

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or self.listen.rsplit(":", 1)[0].strip("[]")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, kind: type, value: Any) -> Any:
    try:
        if kind is bool and isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else value
            return tuple(str(v).strip() for v in items if str(v).strip())
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"setting {name!r}: cannot use {value!r} as {kind.__name__}") from e


def load_config(path: str | os.PathLike[str] | None = None,
                env: dict[str, str] | None = None, **overrides: Any) -> Config:
    """File values, then TOLLGATE_* / REDIS_URL from the environment, then explicit overrides."""
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        values.update(data.get("tollgate", data))
    kinds = {f.name: type(f.default) for f in fields(Config)}
    unknown = set(values) - set(kinds)
    if unknown:
        raise ConfigError(f"unknown settings in {path}: {', '.join(sorted(unknown))}")
    if env.get("REDIS_URL"):
        values["redis_url"] = env["REDIS_URL"]
    for name in kinds:
        key = f"TOLLGATE_{name.upper()}"
        if key in env:
            values[name] = env[key]
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = Config(**{k: _coerce(k, kinds[k], v) for k, v in values.items()})
    if (config.partitions < 1 or config.max_batch < 1 or config.max_queue < 1
            or config.grpc_listeners < 1 or config.stream_max_in_flight < 1):
        raise ConfigError("partitions, max_batch, max_queue, grpc_listeners and "
                          "stream_max_in_flight must be positive")
    if min(config.stream_stall_s, config.shared_batch, config.stream_max_rate) < 0:
        raise ConfigError("stream_stall_s, shared_batch and stream_max_rate must be 0 or more")
    if config.usage_retention_days < 0:
        raise ConfigError("usage_retention_days must be 0 or more")
    if config.appendfsync not in ("always", "everysec", "no"):
        raise ConfigError("appendfsync must be always, everysec or no")
    return config
