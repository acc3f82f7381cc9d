"""The `tollgate` command line: serve, demo, plans load|check, usage export, reconcile, rerate,
bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from engine.config import Config, load_config
from engine.errors import ConfigError
from engine.logs import setup_logging

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
                       log_level=args.log_level)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tollgate",
        description="Tollgate: online charging and usage control over gRPC, on Redis.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the gRPC server (Charging, Provisioning)",
                           description="Run the server until SIGTERM/SIGINT. Without "
                                       "REDIS_URL it starts its own redis-server with AOF.")
    _common(serve)
    demo = sub.add_parser("demo", help="start everything, drive sample sessions, print a table")
    _common(demo)
    demo.add_argument("--sessions", type=int, default=300)
    demo.add_argument("--subscribers", type=int, default=5)
    plans = sub.add_parser("plans", help="load or check a TOML plan file",
                           description="Plan files: see engine/plan_file.py for the format "
                                       "and examples/plans.toml for every feature.")
    plans_sub = plans.add_subparsers(dest="plans_command", required=True, metavar="ACTION")
    load = plans_sub.add_parser("load", help="store each plan of FILE as a new version "
                                             "(PutPlan on a running server)")
    load.add_argument("file", metavar="FILE")
    load.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                      help=f"the Tollgate gRPC address (default {DEFAULT_SERVER})")
    load.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                      help="per call (default 10)")
    check = plans_sub.add_parser("check", help="validate FILE without a server")
    check.add_argument("file", metavar="FILE")
    _billing_parsers(sub)
    from bench.cli import add_bench_parser
    add_bench_parser(sub)
    return p


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
                    "Columns: see engine/export.py.")
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
    from engine.export import export, parse_time
    from engine.reconcile import reconcile
    from engine.rerate import rerate
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
    from engine.plan_file import PlanFileError, load_plans
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

    from tollgate.v1 import provisioning_pb2_grpc
    with grpc.insecure_channel(args.server) as channel:
        stub = provisioning_pb2_grpc.ProvisioningStub(channel)
        for plan in plans:
            try:
                stored = stub.PutPlan(plan, timeout=args.timeout)
            except grpc.RpcError as e:
                print(f"tollgate: {plan.plan_id}: {e.code().name}: {e.details()}",
                      file=sys.stderr)
                return 1
            print(f"{stored.plan_id}: version {stored.version}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "plans":
        return plans_command(args)
    if args.command in ("usage", "reconcile", "rerate"):
        return billing_command(args)
    if args.command == "bench":
        from bench.cli import bench_command
        return bench_command(args)
    try:
        config = _config(args)
    except ConfigError as e:
        print(f"tollgate: {e}", file=sys.stderr)
        return 2
    if args.command == "serve":
        setup_logging(config.log_level, config.log_format)
        from server import serve

        def ready(app: object) -> None:
            print(f"tollgate serving on {getattr(app, 'address', '?')}", flush=True)

        try:
            asyncio.run(serve(config, ready))
        except ConfigError as e:
            logging.getLogger("tollgate").error("%s", e)
            return 2
        return 0
    if args.command == "demo":
        setup_logging(args.log_level or "WARNING", config.log_format if args.log_format
                      else "text")
        from engine.demo import demo_config, run_demo
        try:
            asyncio.run(run_demo(demo_config(config), args.sessions, args.subscribers))
        except ConfigError as e:
            print(f"tollgate: {e}", file=sys.stderr)
            return 2
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
