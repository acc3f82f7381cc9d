"""The `tollgate` command line: serve, demo, plans load|check, usage export, reconcile, rerate,
token create, dev cluster, lifecycle, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from tollgate.engine.errors import ConfigError
from tollgate.engine.ops.config import Config, load_config
from tollgate.engine.ops.logs import setup_logging

DEFAULT_SERVER = "127.0.0.1:50051"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--listen", help="gRPC address, host:port (default 127.0.0.1:50051)")
    p.add_argument("--redis-url", help="use this Redis (also REDIS_URL); default: start an "
                                       "embedded redis-server")
    p.add_argument("--data-dir", help="data folder of the embedded redis-server")
    p.add_argument("--log-format", choices=["json", "text"])
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, listen=args.listen, redis_url=args.redis_url,
                       data_dir=args.data_dir, log_format=args.log_format,
                       log_level=args.log_level, workers=getattr(args, "workers", None),
                       diameter_listen=getattr(args, "diameter", None),
                       http_listen=getattr(args, "http_listen", None))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tollgate",
        description="Tollgate: online charging and usage control over gRPC, on Redis.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the gRPC server (Charging, Provisioning)",
                           description="Run the server until SIGTERM/SIGINT. Without "
                                       "REDIS_URL it starts its own redis-server with AOF.")
    _common(serve)
    serve.add_argument("--http", metavar="HOST:PORT", dest="http_listen",
                       help="also serve the web pages (dashboard, subscriber view, "
                            "self-service links) here; also http_listen in --config")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="N server processes on the one port (SO_REUSEPORT), restarted by "
                            "a supervisor when one dies (default 1)")
    serve.add_argument("--diameter", metavar="HOST:PORT",
                       help="also serve Diameter Gy credit control here (usually port 3868; "
                            "needs diameter_peers in the configuration)")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    demo = sub.add_parser("demo", help="start everything, drive sample sessions, print a table")
    _common(demo)
    demo.add_argument("--sessions", type=int, default=300)
    demo.add_argument("--subscribers", type=int, default=5)
    demo.add_argument("--keep", action="store_true",
                      help="keep running after the table (the web pages stay up) until Ctrl-C")
    plans = sub.add_parser("plans", help="load or check a TOML plan file",
                           description="Plan files: see engine/rating/plan_file.py for the format "
                                       "and examples/plans.toml for every feature.")
    plans_sub = plans.add_subparsers(dest="plans_command", required=True, metavar="ACTION")
    load = plans_sub.add_parser("load", help="store each plan of FILE as a new version "
                                             "(PutPlan on a running server)",
                                description="A server with tokens or TLS: set "
                                            "TOLLGATE_CLIENT_TOKEN (an operator token), "
                                            "TOLLGATE_CLIENT_CA, and for mutual TLS "
                                            "TOLLGATE_CLIENT_CERT and TOLLGATE_CLIENT_KEY.")
    load.add_argument("file", metavar="FILE")
    load.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                      help=f"the Tollgate gRPC address (default {DEFAULT_SERVER})")
    load.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                      help="per call (default 10)")
    check = plans_sub.add_parser("check", help="validate FILE without a server")
    check.add_argument("file", metavar="FILE")
    _billing_parsers(sub)
    _token_parsers(sub)
    dev = sub.add_parser("dev", help="local tools for development: a Redis Cluster")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")
    cl = dev_sub.add_parser(
        "cluster", help="start a local Redis Cluster on free ports until Ctrl-C",
        description="Starts redis-server cluster nodes on 127.0.0.1 (free ports, slots split "
                    "evenly), prints the redis+cluster:// URL for --redis-url / REDIS_URL, "
                    "and stops and removes them on Ctrl-C or SIGTERM.")
    cl.add_argument("--nodes", type=int, default=3, metavar="N", help="masters (default 3)")
    cl.add_argument("--replicas", type=int, default=0, metavar="R",
                    help="replicas per master (default 0)")
    cl.add_argument("--dir", metavar="DIR",
                    help="data folder (default: a temporary one, removed at the end)")
    lc = sub.add_parser(
        "lifecycle", help="run the lifecycle process: states, notifications, campaigns",
        description="Reads the event and usage streams of the Redis that Tollgate uses "
                    "(consumer group; run several for more throughput), moves subscribers "
                    "between states, sends notifications and runs campaigns, until "
                    "SIGTERM/SIGINT. Channels, rules and campaigns: the [lifecycle] table of "
                    "--config (see engine/lifecycle/settings.py and examples/lifecycle.toml).")
    lc.add_argument("--consumer", metavar="NAME",
                    help="this process's consumer name (default: host-pid); reuse it after a "
                         "restart to take over this consumer's pending events at once")
    lc.add_argument("--check", action="store_true",
                    help="validate the configuration, print a summary and exit")
    lc.add_argument("--redis-url", help="the Redis Tollgate uses (also REDIS_URL, or the "
                                        "redis_url of --config)")
    lc.add_argument("--config", metavar="FILE", help="TOML configuration file")
    lc.add_argument("--log-format", choices=["json", "text"])
    lc.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    from tollgate.bench.cli import add_bench_parser
    add_bench_parser(sub)
    return p


def _token_parsers(sub: argparse._SubParsersAction) -> None:
    token = sub.add_parser("token", help="client bearer tokens: create",
                           description="Tokens authenticate gRPC clients when the server's "
                                       "tokens_file is set. Only a SHA-256 of each is stored.")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_sub.add_parser(
        "create", help="add a client to a tokens file and print its new token once",
        description="Roles: gateway (Charging), operator (Provisioning and other operator "
                    "services), billing (Billing). The server reads the file again within "
                    "seconds; no restart needed.")
    create.add_argument("--file", required=True, metavar="FILE",
                        help="the tokens file (created with mode 0600)")
    create.add_argument("--name", required=True, help="the client's name (shown in logs)")
    create.add_argument("--role", required=True, action="append",
                        choices=["gateway", "operator", "billing"],
                        help="a role of the client (repeat for several)")


def token_command(args: argparse.Namespace) -> int:
    """`tollgate token create`: the token on stdout, nothing else."""
    from tollgate.engine.ops.security import create_token
    try:
        print(create_token(args.file, args.name, args.role))
    except (ConfigError, OSError) as e:
        print(f"tollgate: {e}", file=sys.stderr)
        return 2
    print(f"client {args.name!r} ({', '.join(args.role)}) added to {args.file}; the token "
          "is shown only this once", file=sys.stderr)
    return 0


def _tool_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", help="the Redis Tollgate uses (also REDIS_URL, or the "
                                       "redis_url of --config)")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _billing_parsers(sub: argparse._SubParsersAction) -> None:
    usage = sub.add_parser("usage", help="rated usage records: export",
                           description="Rated usage records on the partition streams.")
    usage_sub = usage.add_subparsers(dest="usage_command", required=True, metavar="ACTION")
    export = usage_sub.add_parser(
        "export", help="write the records of a period to CSV or Parquet (streamed)",
        description="Streams every partition's usage records whose record id (the time "
                    "they were written) lies in [--from, --to) into FILE; prints totals. "
                    "Columns: see engine/billing/export.py.")
    export.add_argument("--from", dest="from_", metavar="TIME",
                        help="ISO 8601 time (naive = UTC) or Unix ms; default: the start")
    export.add_argument("--to", metavar="TIME", help="exclusive; default: now and later")
    export.add_argument("--format", choices=["csv", "parquet"], default="csv")
    export.add_argument("--out", required=True, metavar="FILE")
    export.add_argument("--account", metavar="ID", help="only this account's records")
    export.add_argument("--chunk", type=int, default=2000, help="records per Redis read")
    export.add_argument("--row-group", type=int, default=20_000,
                        help="Parquet rows per row group (memory bound)")
    _tool_common(export)
    rec = sub.add_parser(
        "reconcile", help="prove per account that balances and usage records add up",
        description="Per account: init + top-ups - add-ons - usage - forfeits + adjustments "
                    "= money + reserved, and per bucket initial = remaining + reserved + "
                    "units charged. Prints each account where it does not hold; exit 1 if any.")
    rec.add_argument("--account", metavar="ID", help="only this account")
    _tool_common(rec)
    rr = sub.add_parser(
        "rerate", help="re-price stored usage with a plan version; book adjustments",
        description="Re-prices the money-charged part of the USAGE records written in "
                    "[--from, --to) and writes ADJUSTMENT records and balance corrections "
                    "(atomically per account). Running it again is a no-op.")
    rr.add_argument("--account", metavar="ID", help="records of this account (plan: its own)")
    rr.add_argument("--plan", metavar="ID", help="records priced with this plan")
    rr.add_argument("--from", dest="from_", metavar="TIME",
                    help="ISO 8601 time (naive = UTC) or Unix ms")
    rr.add_argument("--to", metavar="TIME", help="exclusive")
    rr.add_argument("--plan-version", type=int, default=0, metavar="N",
                    help="the plan version to price with (default: the current one)")
    rr.add_argument("--dry-run", action="store_true", help="compute and print, write nothing")
    _tool_common(rr)


def _redis_url(args: argparse.Namespace) -> str:
    url = args.redis_url
    if not url:
        config = load_config(args.config)
        url = config.redis_url
    if not url:
        raise ConfigError("give --redis-url (or REDIS_URL): the Redis that Tollgate uses")
    return str(url)


def billing_command(args: argparse.Namespace) -> int:
    """`tollgate usage export`, `reconcile`, `rerate`."""
    from tollgate.engine.billing.export import export, parse_time
    from tollgate.engine.billing.reconcile import reconcile
    from tollgate.engine.billing.rerate import rerate
    try:
        url = _redis_url(args)
        progress = not args.no_progress
        if args.command == "usage":
            from_ms = parse_time(args.from_) if args.from_ else None
            to_ms = parse_time(args.to) if args.to else None
            totals = export(url, args.out, args.format, from_ms, to_ms, args.account,
                            chunk=args.chunk, row_group=args.row_group, progress=progress)
            print(f"exported to {args.out}:")
            print("\n".join(totals.lines()))
            return 0
        if args.command == "reconcile":
            report = reconcile(url, args.account, progress=progress)
            print("\n".join(report.lines()))
            return 0 if report.ok else 1
        if not args.account and not args.plan:
            raise ValueError("give --account or --plan")
        rr = rerate(url, account=args.account, plan_id=args.plan,
                    from_ms=parse_time(args.from_) if args.from_ else None,
                    to_ms=parse_time(args.to) if args.to else None,
                    plan_version=args.plan_version, dry_run=args.dry_run, progress=progress)
        print("\n".join(rr.lines()))
        return 1 if rr.problems else 0
    except (ConfigError, ValueError, OSError) as e:
        print(f"tollgate: {e}", file=sys.stderr)
        return 2


def plans_command(args: argparse.Namespace) -> int:
    """`tollgate plans check|load FILE`: 0 when every plan is valid (and stored), 1 if not."""
    from tollgate.engine.rating.plan_file import PlanFileError, load_plans
    try:
        plans = load_plans(args.file)
    except PlanFileError as e:
        print(f"tollgate: {e}", file=sys.stderr)
        return 1
    if args.plans_command == "check":
        for plan in plans:
            print(f"{plan.plan_id}: valid ({len(plan.rates)} rates, {len(plan.bundles)} "
                  f"bundles, {len(plan.addons)} add-ons)")
        return 0
    import grpc

    from tollgate.engine.ops.security import ClientSettings
    from tollgate.v1 import provisioning_pb2_grpc
    client = ClientSettings.from_env()
    with client.channel(args.server) as channel:
        stub = provisioning_pb2_grpc.ProvisioningStub(channel)
        for plan in plans:
            try:
                stored = stub.PutPlan(plan, timeout=args.timeout, metadata=client.metadata())
            except grpc.RpcError as e:
                print(f"tollgate: {plan.plan_id}: {e.code().name}: {e.details()}",
                      file=sys.stderr)
                return 1
            print(f"{stored.plan_id}: version {stored.version}", flush=True)
    return 0


def dev_cluster(args: argparse.Namespace) -> int:
    """`tollgate dev cluster`: runs a local Redis Cluster until Ctrl-C / SIGTERM."""
    import shutil
    import signal
    import tempfile
    import threading
    from pathlib import Path

    from tollgate.engine.storage.redis_cluster import LocalCluster
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tollgate-cluster-"))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"starting {args.nodes} masters with {args.replicas} replicas each in {base} ...",
          file=sys.stderr, flush=True)
    try:
        with LocalCluster(base, masters=args.nodes, replicas=args.replicas) as cluster:
            for m in cluster.masters():
                print(f"master 127.0.0.1:{m} replicas "
                      f"{' '.join(f'127.0.0.1:{r}' for r in cluster.replicas_of(m)) or '-'}",
                      file=sys.stderr)
            print(cluster.url, flush=True)
            print("Ctrl-C stops it", file=sys.stderr, flush=True)
            stop.wait()
    except ConfigError as e:
        print(f"tollgate: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def lifecycle_command(args: argparse.Namespace) -> int:
    """`tollgate lifecycle`: runs until SIGTERM/SIGINT (0), or 2 on a configuration error."""
    from tollgate.engine.lifecycle.process import run_lifecycle
    from tollgate.engine.lifecycle.settings import load_settings
    try:
        config = load_config(args.config, redis_url=args.redis_url, log_format=args.log_format,
                             log_level=args.log_level)
        settings = load_settings(args.config)
        if args.consumer:
            settings = settings.replace(consumer=args.consumer)
        if args.check:
            print(f"lifecycle: {len(settings.rules)} rules, {len(settings.campaigns)} "
                  f"campaigns; channels: "
                  f"{', '.join(c for c in ('webhook', 'email', 'sms') if getattr(settings, c))}")
            return 0
        if not config.redis_url:
            raise ConfigError("give --redis-url (or REDIS_URL): the Redis that Tollgate uses")
    except ConfigError as e:
        print(f"tollgate: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format, config.log_sensitive)
    try:
        asyncio.run(run_lifecycle(config, settings))
    except ConfigError as e:  # e.g. a partition count that is not the installation's
        print(f"tollgate: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "plans":
        return plans_command(args)
    if args.command == "dev":
        return dev_cluster(args)
    if args.command == "lifecycle":
        return lifecycle_command(args)
    if args.command in ("usage", "reconcile", "rerate"):
        return billing_command(args)
    if args.command == "token":
        return token_command(args)
    if args.command == "bench":
        from tollgate.bench.cli import bench_command
        return bench_command(args)
    try:
        config = _config(args)
    except ConfigError as e:
        print(f"tollgate: {e}", file=sys.stderr)
        return 2
    if args.command == "serve":
        setup_logging(config.log_level, config.log_format, config.log_sensitive)
        if config.workers > 1 and args.worker_index is None:
            from tollgate.engine.ops.supervisor import Supervisor
            return Supervisor(config).run()
        from tollgate.server import serve

        def ready(app: object) -> None:
            print(f"tollgate serving on {getattr(app, 'address', '?')}", flush=True)
            diameter = getattr(app, "diameter", None)
            if diameter is not None:
                print(f"diameter on {diameter.settings.host}:{diameter.port}", flush=True)

        try:
            asyncio.run(serve(config, ready))
        except ConfigError as e:
            logging.getLogger("tollgate").error("%s", e)
            return 2
        return 0
    if args.command == "demo":
        setup_logging(args.log_level or "WARNING", config.log_format if args.log_format
                      else "text")
        from tollgate.engine.ops.demo import demo_config, run_demo
        try:
            asyncio.run(run_demo(demo_config(config), args.sessions, args.subscribers,
                                 keep=args.keep))
        except ConfigError as e:
            print(f"tollgate: {e}", file=sys.stderr)
            return 2
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
