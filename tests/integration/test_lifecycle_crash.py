"""`tollgate lifecycle` as its own process: killed (SIGKILL) in the middle of its work and
started again, it loses no message; the events it had read are handled by the new process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import Gateway, running
from tests.integration.receivers import HttpReceiver, eventually
from tollgate.engine.ops.config import Config
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_client import connect_async
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

ROOT = Path(__file__).resolve().parents[2]
SUBSCRIBERS = 30


def config_file(tmp_path: Path, config: Config, http: HttpReceiver) -> Path:
    path = tmp_path / "tollgate.toml"
    path.write_text(f"""
[tollgate]
redis_url = "{config.redis_url}"
partitions = {config.partitions}
log_format = "text"
log_level = "WARNING"

[lifecycle]
group = "lifecycle"
poll_s = 0.02
lease_s = 1.0
redeliver_s = 1.0
batch = 4
metrics_port = 0

[lifecycle.webhook]
url = "{http.url}/hook"

[[lifecycle.rules]]
name = "grace"
event = "STATE_CHANGED"
states = ["GRACE"]
channels = ["webhook"]
templates.en = {{ subject = "Credit used up", text = "Line $subscriber: free services only." }}
""")
    return path


def start(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tollgate", "lifecycle", "--config", str(path),
         "--consumer", "one"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


async def test_killing_the_lifecycle_mid_batch_and_restarting_loses_nothing(
        config: Config, tmp_path: Path):
    # A server of the test's own, without background sweeps and trims: only what is tested.
    async with running(config.replace(sweep_interval_s=0, stream_trim_interval_s=0)) as gw:
        await _kill_and_restart(gw, config, tmp_path)


async def _kill_and_restart(gateway: Gateway, config: Config, tmp_path: Path) -> None:
    http = HttpReceiver(delay_s=0.05)
    subs = await gateway.setup(accounts=SUBSCRIBERS)
    for sub in subs:
        await gateway.provisioning.SetSubscriberState(ppb.Subscriber(subscriber_id=sub,
                                                                     state=com.GRACE))
    path = config_file(tmp_path, config, http)
    first = start(path)
    try:
        await eventually(lambda: len(http.on("/hook")) >= 5, timeout_s=60,
                         what="the first messages")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = len(http.on("/hook"))
        assert killed_at < SUBSCRIBERS  # it died in the middle of the work
        second = start(path)
        try:
            def ids() -> set[str]:
                return {h.headers["X-Tollgate-Message-Id"] for h in http.on("/hook")}
            await eventually(lambda: len(ids()) == SUBSCRIBERS, timeout_s=60,
                             what="every message")
            by_sub = {h.json()["subscriber_id"]: h.headers["X-Tollgate-Message-Id"]
                      for h in http.on("/hook")}
            assert set(by_sub) == set(subs)
            for sub, msg_id in by_sub.items():
                assert msg_id.startswith(f"grace:state:{sub}:")
                assert msg_id.endswith(f":{sub}:webhook")
            # A message can be sent again only if the kill came between its send and its
            # settling: at most one claimed batch of the dead process.
            assert len(http.on("/hook")) - SUBSCRIBERS <= 4
            db = connect_async(config.redis_url)
            try:
                async def settled() -> bool:
                    pending = 0
                    for p in range(config.partitions):
                        for g in await db.xinfo_groups(keys.events_stream(p)):
                            pending += g["pending"]
                    return pending == 0 and await db.zcard(keys.LC_OUTBOX) == 0
                await eventually(settled, timeout_s=20, what="no pending events or messages")
            finally:
                await db.aclose()
            await asyncio.sleep(0.3)
            assert len({h.headers["X-Tollgate-Message-Id"] for h in http.on("/hook")}) == \
                SUBSCRIBERS
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0, second.stdout.read() if second.stdout else ""
    finally:
        if first.poll() is None:
            first.kill()
        http.stop()

