"""The `tollgate` command line: serve, demo, plans load|check."""

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
    return p


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
