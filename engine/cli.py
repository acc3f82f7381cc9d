"""The `tollgate` command line: serve, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from engine.config import Config, load_config
from engine.errors import ConfigError
from engine.logs import setup_logging


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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
