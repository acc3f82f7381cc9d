"""`tollgate demo`: a sample plan, a few subscribers and a few hundred sessions, then a table;
the lifecycle runs in-process and the notifications a local webhook receives are printed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

from tollgate.engine.lifecycle.process import Lifecycle
from tollgate.engine.lifecycle.settings import parse_settings
from tollgate.engine.ops.config import Config
from tollgate.server import Tollgate
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import charging_pb2_grpc, provisioning_pb2_grpc
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

EUR = 1_000_000
MB = 1_000_000
DATA, VOICE = 10, 100

DEMO_PLAN = ppb.Plan(
    plan_id="demo-mobile",
    name="Demo mobile: 400 MB bundle, then 0.50 EUR/MB; voice 0.10 EUR/min",
    currency="EUR",
    rates=[
        ppb.Rate(rating_group=DATA, unit_type=com.OCTETS, price_micros=500, increment=1000,
                 default_quota=5 * MB, validity_time_s=3600, quota_holding_time_s=600,
                 threshold_percent=20),
        ppb.Rate(rating_group=VOICE, unit_type=com.SECONDS, price_micros=100_000, increment=60,
                 first_increment=60, default_quota=120, validity_time_s=3600),
    ],
    bundles=[ppb.BundleTemplate(bucket_id="data-400mb", rating_groups=[DATA],
                                unit_type=com.OCTETS, units=400 * MB)],
    addons=[ppb.AddOn(addon_id="extra-1gb", name="1 GB extra", price_micros=5 * EUR,
                      bundle=ppb.BundleTemplate(bucket_id="extra-1gb", rating_groups=[DATA],
                                                unit_type=com.OCTETS, units=1000 * MB))],
    grace_days=14, retention_days=90)


def _rule(name: str, event: str, text: str, **kw: object) -> dict[str, object]:
    return {"name": name, "event": event, "channels": ["webhook"],
            "templates": {"en": {"subject": name, "text": text}}, **kw}


DEMO_SEGMENT_CAMPAIGN = {
    "name": "stay-with-us", "signal": "segment", "offer": True, "channels": ["webhook"],
    "templates": {"en": {"subject": "A bundle for you",
                         "text": "$offers\nYour line: $self_link"}}}
"""Sent from the web segments page (tollgate demo --keep) to the segment an operator picks."""

DEMO_RULES = [
    _rule("bundle", "BUCKET_USED", "$threshold% of your $bucket bundle used", thresholds=[50]),
    _rule("bundle-offer", "BUCKET_USED", "$threshold% of $bucket used; buy more: $offers",
          thresholds=[80, 100], offer=True),
    _rule("final-units", "FINAL_UNITS", "last units granted: top up", critical=True),
    _rule("state", "STATE_CHANGED", "your line is now $state", critical=True),
    _rule("topped-up", "TOPPED_UP", "$money EUR added"),
]


class WebhookReceiver:
    """The demo's stand-in for an operator's notification endpoint: collects JSON POSTs."""

    def __init__(self) -> None:
        self.received: list[dict[str, object]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tollgate"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r  sessions [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


async def _session(stub: charging_pb2_grpc.ChargingStub, rnd: random.Random, n: int,
                   subscriber: str, totals: dict[str, int]) -> None:
    sid = f"demo-{subscriber}-{n}"
    rg = DATA if rnd.random() < 0.7 else VOICE
    field = "total_octets" if rg == DATA else "time_seconds"

    def su(used: int | None, want: bool) -> cpb.ServiceUnits:
        m = cpb.ServiceUnits(rating_group=rg)
        if used is not None:
            m.used.CopyFrom(cpb.Units(**{field: used}))
        if want:
            m.requested.CopyFrom(cpb.Units())
        return m

    def granted(ans: cpb.ChargeAnswer) -> int:
        g = ans.grants[0]
        if g.result != cpb.SUCCESS:
            totals["denied"] += 1
        return g.granted.total_octets if rg == DATA else g.granted.time_seconds

    rn = 0
    ans = await stub.Charge(cpb.ChargeRequest(session_id=sid, request_number=rn,
                                              type=cpb.INITIAL, subscriber_id=subscriber,
                                              units=[su(None, True)]))
    totals["requests"] += 1
    quota = granted(ans)
    for _ in range(rnd.randint(0, 3)):
        if quota == 0:
            break
        rn += 1
        ans = await stub.Charge(cpb.ChargeRequest(
            session_id=sid, request_number=rn, type=cpb.UPDATE, subscriber_id=subscriber,
            units=[su(rnd.randint(quota // 2, quota), True)]))
        totals["requests"] += 1
        totals["charged"] += ans.charged_micros
        quota = granted(ans)
    rn += 1
    ans = await stub.Charge(cpb.ChargeRequest(
        session_id=sid, request_number=rn, type=cpb.TERMINATION, subscriber_id=subscriber,
        units=[su(rnd.randint(0, quota), False)]))
    totals["requests"] += 1
    totals["charged"] += ans.charged_micros


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _eur(micros: int) -> str:
    return f"{micros / EUR:,.2f}"


async def run_demo(config: Config, sessions: int = 300, subscribers: int = 5,
                   seed: int = 7, keep: bool = False) -> str:
    """keep: after the table, the server (and its web pages) runs on until Ctrl-C."""
    hook = WebhookReceiver()
    try:
        async with Tollgate(config) as app:
            url = app.redis.url if app.redis is not None else config.redis_url
            if app.web is not None:
                print(f"Web pages: {app.web.url}/dashboard (operator dashboard), "
                      f"{app.web.url}/care (subscribers)", flush=True)
            settings = parse_settings({"webhook": {"url": hook.url}, "rules": DEMO_RULES,
                                       "campaigns": [DEMO_SEGMENT_CAMPAIGN],
                                       "self_link_url": app.web.url if app.web else "",
                                       "poll_s": 0.05, "metrics_port": 0,
                                       "group": f"demo-{random.randrange(1 << 30)}"})
            async with Lifecycle(config.replace(redis_url=url), settings):
                summary = await _drive(app, sessions, subscribers, seed)
                await _show_notifications(hook)
                if keep:
                    await _stay(app)
                return summary
    finally:
        hook.stop()


async def _stay(app: Tollgate) -> None:
    """Runs on until SIGINT / SIGTERM, so the web pages can be looked at."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    where = f" at {app.web.url}/dashboard" if app.web is not None else ""
    print(f"\nStill running{where}; Ctrl-C ends the demo.", flush=True)
    await stop.wait()


async def _show_notifications(hook: WebhookReceiver) -> None:
    """Waits for the lifecycle to go quiet, then prints what the webhook received."""
    seen = -1
    while seen != len(hook.received):
        seen = len(hook.received)
        await asyncio.sleep(1.0)
    print(f"\nLifecycle: {seen} notifications arrived at the demo webhook {hook.url}:")
    for msg in hook.received:
        print(f"  {msg['subscriber_id']}  [{msg['rule']}]  {msg['text']}".replace("\n", " "))


async def _drive(app: Tollgate, sessions: int, subscribers: int, seed: int) -> str:
    async with grpc.aio.insecure_channel(app.address) as channel:
        prov = provisioning_pb2_grpc.ProvisioningStub(channel)
        stub = charging_pb2_grpc.ChargingStub(channel)
        plan = await prov.PutPlan(DEMO_PLAN)
        print(f"Tollgate listening on {app.address}; plan {plan.plan_id!r} v{plan.version}: "
              f"{plan.name}")
        run = random.Random(seed).randrange(1 << 30)
        subs = [f"+3160{run % 10**6:06d}{i:02d}" for i in range(subscribers)]
        accounts = [f"demo-acct-{run}-{i}" for i in range(subscribers)]
        for i, (sub, acct) in enumerate(zip(subs, accounts, strict=True)):
            await prov.CreateAccount(ppb.CreateAccountRequest(
                account_id=acct, plan_id=plan.plan_id, initial_money_micros=(5 + 5 * i) * EUR))
            await prov.CreateSubscriber(ppb.Subscriber(subscriber_id=sub, account_id=acct))
        print(f"{subscribers} subscribers, each with a 400 MB bundle and 5-25 EUR; driving "
              f"{sessions} sessions (INITIAL / UPDATE / TERMINATION) over gRPC")
        rnd = random.Random(seed)
        totals = {"requests": 0, "charged": 0, "denied": 0}
        per_sub: dict[str, int] = {}
        done = 0
        concurrency = 32
        queue = [(n, subs[n % subscribers]) for n in range(sessions)]
        for start in range(0, sessions, concurrency):
            chunk = queue[start:start + concurrency]
            await asyncio.gather(*(_session(stub, rnd, n, s, totals) for n, s in chunk))
            for _, s in chunk:
                per_sub[s] = per_sub.get(s, 0) + 1
            done += len(chunk)
            _progress(done, sessions)
        rows = [["subscriber", "sessions", "bundle used MB", "bundle left MB", "money spent",
                 "money left", "reserved"]]
        for sub, acct_id in zip(subs, accounts, strict=True):
            acct = await prov.GetAccount(ppb.GetAccountRequest(account_id=acct_id))
            b = acct.buckets[0]
            start_money = (5 + 5 * subs.index(sub)) * EUR
            rows.append([sub, str(per_sub.get(sub, 0)), f"{b.used / MB:,.1f}",
                         f"{b.remaining / MB:,.1f}",
                         _eur(start_money - acct.money_micros - acct.reserved_micros),
                         _eur(acct.money_micros), _eur(acct.reserved_micros)])
        topped = []
        for sub, acct_id in zip(subs, accounts, strict=True):
            state = await prov.GetSubscriber(ppb.GetSubscriberRequest(subscriber_id=sub))
            if state.state == com.GRACE:  # out of credit: a top-up brings the line back
                await prov.TopUp(ppb.TopUpRequest(topup_id=f"demo-{run}", account_id=acct_id,
                                                  amount_micros=10 * EUR))
                topped.append(sub)
        summary = (f"\n{_table(rows)}\n\n{totals['requests']} requests answered, "
                   f"{_eur(totals['charged'])} EUR charged, {totals['denied']} grants refused "
                   "for lack of credit."
                   + (f" Topped up 10.00 EUR: {', '.join(topped)} (out of credit)." if topped
                      else ""))
        print(summary)
        return summary


def demo_config(config: Config) -> Config:
    if not config.redis_url and config.data_dir == Config().data_dir:
        config = config.replace(data_dir=tempfile.mkdtemp(prefix="tollgate-demo-"))
    return config.replace(listen=config.listen if config.listen != Config().listen
                          else "127.0.0.1:0",
                          http_listen=config.http_listen or "127.0.0.1:0")
