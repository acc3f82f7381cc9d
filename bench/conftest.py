"""Benchmark fixtures: the test suite's real redis-server and Tollgate (started and stopped
here too)."""

from tests.conftest import config, redis_server, redis_url, tollgate

__all__ = ["config", "redis_server", "redis_url", "tollgate"]
