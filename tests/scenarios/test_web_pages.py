"""The web pages in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium; nothing is downloaded): log in, watch the dashboard count traffic charged over gRPC,
find a subscriber, top it up from the page, open its self-service link and a tampered one.
Screenshots of each page go to docs/images/ (the README shows them)."""

from __future__ import annotations

import asyncio
import functools
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from engine.config import Config
from engine.demo import DEMO_PLAN
from engine.lifecycle.process import Lifecycle
from engine.lifecycle.settings import parse_settings
from engine.redis_client import connect
from engine.redis_server import RedisServer
from tests.helpers import DATA_RG, MB, VOICE_RG, Gateway, mscc, request
from tests.live import Live
from tests.web import EUR, Bearer, web_config
from tollgate.v1 import charging_pb2 as cpb

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"

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
def live(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Live, Gateway, str]]:
    """A Tollgate with its web pages and a lifecycle, on a loop of their own (Selenium is
    synchronous), and a gateway whose token may charge and provision."""
    client = connect(redis_server.url)
    client.flushall()
    client.close()
    config, operator, gateway = web_config(
        Config(listen="127.0.0.1:0", redis_url=redis_server.url, partitions=8,
               batch_window_ms=0.5, log_format="text", metrics_port=0), tmp_path)
    live = Live(config)

    async def connect_all() -> tuple[Gateway, Lifecycle]:
        lc = await Lifecycle(config, parse_settings(
            {"poll_s": 0.05, "metrics_port": 0, "group": "web-test"})).start()
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


def test_operator_and_subscriber_pages_in_a_browser(live: tuple[Live, Gateway, str],
                                                     browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    app, gw, token = live
    d = browser
    wait = WebDriverWait(d, 15)  # type: ignore[arg-type]
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
