"""The web pages in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium; nothing is downloaded): log in, watch the dashboard count traffic charged over gRPC,
find a subscriber, top it up from the page, open its self-service link and a tampered one;
build a segment on the segments page and send it an offer, which the lifecycle delivers.
Screenshots of each page go to $TOLLGATE_SCREENSHOTS when it is set (the docs' pictures:
`TOLLGATE_SCREENSHOTS=docs/images ./dev.sh test tests/scenarios/test_web_pages.py`), else to
a temporary folder: a test run leaves the checkout as it was."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.helpers import DATA_RG, MB, VOICE_RG, Gateway, mscc, request
from tests.integration.receivers import HttpReceiver
from tests.live import Live
from tests.web import EUR, Bearer, web_config
from tollgate.engine.lifecycle import signals
from tollgate.engine.lifecycle.process import Lifecycle
from tollgate.engine.lifecycle.settings import parse_settings
from tollgate.engine.ops.config import Config
from tollgate.engine.ops.demo import DEMO_PLAN
from tollgate.engine.storage import keys
from tollgate.engine.storage.redis_client import connect
from tollgate.engine.storage.redis_server import RedisServer
from tollgate.v1 import charging_pb2 as cpb
from tollgate.v1 import common_pb2 as com
from tollgate.v1 import provisioning_pb2 as ppb

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
IMAGES = Path(os.environ.get("TOLLGATE_SCREENSHOTS")
              or tempfile.mkdtemp(prefix="tollgate-screenshots-"))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install chromium chromium-driver)"),
]


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="tollgate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def hook() -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    yield r
    r.stop()


WINBACK = {"name": "winback", "signal": "segment", "offer": True, "channels": ["webhook"],
           "templates": {"en": {"subject": "We miss you",
                                "text": "Hello $subscriber. $offers\nYour page: $self_link"}}}


@pytest.fixture
def live(redis_server: RedisServer, tmp_path: Path, hook: HttpReceiver
         ) -> Iterator[tuple[Live, Gateway, str]]:
    """A Tollgate with its web pages and a lifecycle (a webhook, a campaign for segments), on
    a loop of their own (Selenium is synchronous), and a gateway whose token may charge and
    provision."""
    client = connect(redis_server.url)
    client.flushall()
    client.close()
    config, operator, gateway = web_config(
        Config(listen="127.0.0.1:0", redis_url=redis_server.url, partitions=8,
               batch_window_ms=0.5, log_format="text", metrics_port=0), tmp_path)
    live = Live(config)

    async def connect_all() -> tuple[Gateway, Lifecycle]:
        lc = await Lifecycle(config, parse_settings(
            {"poll_s": 0.05, "metrics_port": 0, "group": "web-test",
             "webhook": {"url": f"{hook.url}/hook"}, "campaigns": [WINBACK],
             "self_link_url": live.app.web.url if live.app.web else ""})).start()
        channel = grpc.aio.insecure_channel(live.app.address, interceptors=[Bearer(gateway)])
        return Gateway(channel), lc
    gw, lc = live.run(connect_all)
    try:
        yield live, gw, operator
    finally:
        live.run(gw.channel.close)
        live.run(lc.stop)
        live.close()


async def _traffic(gw: Gateway, subs: list[str], sessions: int, seed: int) -> None:
    """Data and voice sessions over gRPC, some ending with a refusal for lack of credit."""
    rnd = random.Random(seed)

    async def one(n: int) -> None:
        sub = subs[n % len(subs)]
        sid = f"web-{seed}-{n}"
        rg, field, used = ((DATA_RG, "total_octets", rnd.randint(1, 5) * MB)
                           if rnd.random() < 0.7 else (VOICE_RG, "time_seconds",
                                                       rnd.randint(30, 600)))
        await gw.charge(request(sid, 0, cpb.INITIAL, sub, mscc(rg, want=0, field=field)))
        await gw.charge(request(sid, 1, cpb.TERMINATION, sub, mscc(rg, used=used,
                                                                    field=field)))
    for start in range(0, sessions, 16):
        await asyncio.gather(*(one(n) for n in range(start, min(sessions, start + 16))))


def _shot(driver: object, name: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(IMAGES / name))  # type: ignore[attr-defined]


def _wait(driver: object, seconds: float) -> Any:
    """A wait that reads again an element replaced while it was read: the live pages redraw
    their tables every second, and a row found just before a redraw is stale when read."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, seconds,  # type: ignore[arg-type]
                         ignored_exceptions=(StaleElementReferenceException,))


def test_operator_and_subscriber_pages_in_a_browser(live: tuple[Live, Gateway, str],
                                                     browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    app, gw, token = live
    d = browser
    wait = _wait(d, 15)
    assert app.app.web is not None
    url = app.app.web.url
    subs = app.run(functools.partial(gw.setup, plan=DEMO_PLAN, accounts=5, money=200 * EUR))
    # One line short of money: the dashboard shows its refusals.
    subs += app.run(functools.partial(gw.setup, plan=DEMO_PLAN, accounts=1, money=1 * EUR,
                                      prefix="poor-"))

    def text(element_id: str) -> str:
        return str(d.find_element(By.ID, element_id).text)  # type: ignore[attr-defined]

    # Log in: the dashboard asks for it first.
    d.get(f"{url}/dashboard")  # type: ignore[attr-defined]
    wait.until(ec.url_contains("/login"))
    _shot(d, "login.png")
    d.find_element(By.ID, "token").send_keys("tgk_not-a-token")  # type: ignore[attr-defined]
    d.find_element(By.ID, "login-btn").click()  # type: ignore[attr-defined]
    wait.until(lambda _: "not an operator token" in text("msg"))
    d.find_element(By.ID, "token").clear()  # type: ignore[attr-defined]
    d.find_element(By.ID, "token").send_keys(token)  # type: ignore[attr-defined]
    d.find_element(By.ID, "login-btn").click()  # type: ignore[attr-defined]
    wait.until(ec.url_contains("/dashboard"))
    wait.until(lambda _: text("answered") not in ("", "-"))
    before = int(text("answered").replace(",", ""))

    # The counter moves while traffic is charged over gRPC, without a reload.
    app.run(_traffic, gw, subs, 120, 1)
    wait.until(lambda _: int(text("answered").replace(",", "")) >= before + 240)
    wait.until(lambda _: "updated" in text("live"))
    app.run(_traffic, gw, subs, 120, 2)
    wait.until(lambda _: text("b-base").startswith("ACTIVE"))
    wait.until(lambda _: text("charged") not in ("", "-", "0.00"))
    _shot(d, "dashboard.png")

    # Customer care: find a line, top it up from the page, see the balance change.
    d.get(f"{url}/care")  # type: ignore[attr-defined]
    wait.until(lambda _: text("who") == "care-desk")
    d.find_element(By.ID, "q").send_keys(subs[0])  # type: ignore[attr-defined]
    d.find_element(By.ID, "search-btn").click()  # type: ignore[attr-defined]
    wait.until(lambda _: text("sid") == subs[0])
    balance = app.run(gw.account, "acct-0").money_micros
    assert text("money") == f"{balance / 1e6:,.2f} EUR"
    d.find_element(By.ID, "topup-amount").send_keys("5")  # type: ignore[attr-defined]
    d.find_element(By.ID, "topup-btn").click()  # type: ignore[attr-defined]
    wait.until(lambda _: text("money") == f"{(balance + 5 * EUR) / 1e6:,.2f} EUR")
    assert app.run(gw.account, "acct-0").money_micros == balance + 5 * EUR
    _shot(d, "care.png")

    # A self-service link opens the subscriber's page; a tampered one is refused.
    d.find_element(By.ID, "link-btn").click()  # type: ignore[attr-defined]
    wait.until(lambda _: text("link").startswith("http"))
    link = text("link")
    d.get(link)  # type: ignore[attr-defined]
    wait.until(lambda _: text("sid") == subs[0])
    wait.until(lambda _: text("money") == f"{(balance + 5 * EUR) / 1e6:,.2f} EUR")
    assert "runs out" in text("runout") or "Nothing runs out" in text("runout")
    _shot(d, "self-service.png")
    # The subscriber buys the plan's add-on from the page (5.00 EUR).
    d.find_element(By.CSS_SELECTOR, "#addons button").click()  # type: ignore[attr-defined]
    wait.until(lambda _: text("money") == f"{balance / 1e6:,.2f} EUR")
    assert app.run(gw.account, "acct-0").money_micros == balance
    d.get(link[:-3] + ("xyz" if not link.endswith("xyz") else "abc"))  # type: ignore[attr-defined]
    assert "not valid" in d.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]


async def _histories(app: Live, subs: list[str]) -> None:
    """Weeks of history for some lines, as the lifecycle keeps it: quiet ones that used to
    use the service, one that never tops up; the newest lines have only what the test did."""
    redis = app.app.store.redis  # type: ignore[union-attr]
    now = int(time.time() * 1000)
    w, day = signals.week(now), signals.DAY_MS
    for n, sub in enumerate(subs):
        await redis.hset(keys.lc_activity(sub), mapping={
            signals.FIRST: now - 70 * day, signals.LAST: now - (3 + 12 * n) * day,
            signals.TOPUP: now - (5 + 12 * n) * day, f"u{w}": 40 - 13 * n,
            f"u{w - 1}": 60 - 20 * n, f"u{w - 2}": 100, f"u{w - 3}": 120, f"u{w - 4}": 110,
            f"u{w - 5}": 90, f"o{w}": n % 3, f"r{w}": n % 2})


def test_segments_page_builds_a_segment_and_sends_it_an_offer(
        live: tuple[Live, Gateway, str], browser: object, hook: HttpReceiver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    app, gw, token = live
    d = browser
    wait = _wait(d, 20)
    assert app.app.web is not None
    url = app.app.web.url
    subs = app.run(functools.partial(gw.setup, plan=DEMO_PLAN, accounts=8, money=30 * EUR))
    app.run(_traffic, gw, subs[:4], 24, 3)
    app.run(_histories, app, subs[4:])
    grace = subs[1]
    app.run(gw.provisioning.SetSubscriberState,
            ppb.Subscriber(subscriber_id=grace, state=com.GRACE))

    def text(element_id: str) -> str:
        return str(d.find_element(By.ID, element_id).text)  # type: ignore[attr-defined]

    def click(element_id: str) -> None:
        d.find_element(By.ID, element_id).click()  # type: ignore[attr-defined]

    d.get(f"{url}/segments")  # type: ignore[attr-defined]
    wait.until(ec.url_contains("/login"))
    d.find_element(By.ID, "token").send_keys(token)  # type: ignore[attr-defined]
    click("login-btn")
    wait.until(ec.url_contains("/segments"))

    def shows(count: str) -> bool:
        click("show-btn")  # the census runs every half second here: ask again
        return text("count") == count
    wait.until(lambda _: shows("8"))
    assert "no top-up for" in text("lines") and "high" in text("lines")

    # A segment: the lines in GRACE. Send it the win-back offer, through the lifecycle.
    d.find_element(By.CSS_SELECTOR, "input[name=states][value=GRACE]").click()  # type: ignore[attr-defined]
    wait.until(lambda _: shows("1"))
    assert grace in text("lines") and "in GRACE for 0 days" in text("lines")
    assert "state GRACE" in text("send-words")
    click("send-btn")
    d.switch_to.alert.accept()  # type: ignore[attr-defined]
    wait.until(lambda _: "queued for state GRACE" in text("send-msg"))
    wait.until(lambda _: "done" in text("sends"))
    row = wait.until(lambda _: d.find_element(By.CSS_SELECTOR, "#sends tr:nth-child(2)").text)  # type: ignore[attr-defined]
    assert "winback" in row and "care-desk" in row and row.endswith("1 1")
    sent = [h.json() for h in hook.on("/hook")]
    assert [m["subscriber_id"] for m in sent] == [grace] and sent[0]["offer_id"]

    # The whole base again, with the send recorded: the screenshot for docs/plans.md.
    d.find_element(By.CSS_SELECTOR, "input[name=states][value=GRACE]").click()  # type: ignore[attr-defined]
    wait.until(lambda _: shows("8"))
    _shot(d, "segments.png")

    # The subscriber takes the offer, and answers the survey on the message's own link.
    app.run(gw.provisioning.BuyAddOn, ppb.BuyAddOnRequest(
        order_id="o1", account_id="acct-1", addon_id="extra-1gb", offer_id=sent[0]["offer_id"]))
    d.get(sent[0]["text"].rsplit("Your page: ", 1)[1])  # type: ignore[attr-defined]
    wait.until(lambda _: text("sid") == grace)
    click("nps-3")
    wait.until(lambda _: "Thank you" in text("msg"))
    d.get(f"{url}/dashboard")  # type: ignore[attr-defined]
    wait.until(lambda _: "winback" in text("campaigns"))
    row = wait.until(lambda _: d.find_element(By.CSS_SELECTOR, "#campaigns tr:nth-child(2)").text)  # type: ignore[attr-defined]
    assert row == "winback 1 1 1 5.00 1 -100"
    assert "NPS -100 over 1 answers" in text("nps")
    IMAGES.mkdir(parents=True, exist_ok=True)
    d.find_element(By.ID, "campaign-card").screenshot(  # type: ignore[attr-defined]
        str(IMAGES / "campaigns.png"))
