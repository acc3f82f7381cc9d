"""Benchmark fixtures: the test suite's real redis-server and Tollgate (started and stopped
here too), on a single Redis unless TOLLGATE_TEST_REDIS says otherwise (e.g. `cluster`)."""

import os

os.environ.setdefault("TOLLGATE_TEST_REDIS", "single")  # tests.conftest reads it at import

from tests.conftest import (
    config,
    redis_cluster,
    redis_server,
    redis_url,
    tollgate,
)

__all__ = ["config", "redis_cluster", "redis_server", "redis_url", "tollgate"]
