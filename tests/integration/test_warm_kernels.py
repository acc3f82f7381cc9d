"""After the server's start, charging traffic compiles no kernel: a variant Numba had not
seen (an array's layout, a read-only flag, an argument's type) would compile, or load from
the cache, inside a batch and hold it for seconds (requests past their deadline)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.processes import ROOT
from tollgate.engine.domain import ResultCode


def test_varied_traffic_after_start_compiles_no_kernel(redis_url):
    # A process of its own: in the suite's process earlier tests have run these kernels.
    done = subprocess.run([sys.executable, "-m", "tests.integration.warm_traffic", redis_url],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    results = {ResultCode(int(code)): n for code, n in out["results"].items()}
    # The traffic did reach the kernels: grants, refusals of each kind it sent, exhaustion.
    assert results[ResultCode.SUCCESS] > 60
    assert {ResultCode.MISSING_AVP, ResultCode.USER_UNKNOWN,
            ResultCode.UNKNOWN_SESSION_ID} <= results.keys()
    assert out["kernels"] > 15
    assert out["grown"] == {}, f"kernels that gained a variant after start: {out['grown']}"
