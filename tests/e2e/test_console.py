"""The live console in a real browser: headless Chromium (the distribution's package, driven by Playwright) against a
real `shop up` started by the test, every API and the console on free ports, on the test Redis.

One `shop up` and one page for the module, in the order a learner would use them: open the page, place orders, stop
the payment workers and start them again, place a poison order, open a journey. Each state is saved as
`console-*.png` in the run's var directory. Skipped, saying so, only where no Chromium executable exists (.ci/run
installs Debian's `chromium` where it can).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shop.client import bearer, sign_in
from shop.embedded_redis import free_port
from tests.support.brokers import TEST_REDIS_URL
from tests.support.waiting import api_is_up, stop_gracefully, wait_until

CHROMIUM = next((path for path in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                                   shutil.which("chromium-browser")) if path and Path(path).exists()), None)
ADMIN = ("admin@example.com", "admin-password-of-the-console-test")
STARTUP_TIMEOUT = 60.0
SHOWN_WITHIN = 5.0
"""seconds within which what happened must be on the page"""
SAGA_TIMEOUT = 30.0
PAID_SAGA = ["OrderCreated", "StockReserved", "PaymentProcessed", "OrderConfirmed", "NotificationSent"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium executable (/usr/bin/chromium or `chromium` on "
                                "PATH; `apt-get install chromium`): the console's browser tests need one")


@dataclass
class Console:
    url: str
    order_url: str
    var_dir: Path
    admin_token: str
    page: Any
    errors: list[str]

    def screenshot(self, name: str) -> Path:
        path = self.var_dir / f"console-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def board(self, service: str, column: str) -> str:
        return str(self.page.locator(f'#board tr[data-service="{service}"] td.{column}').text_content())

    def place(self, outcome: str, count: int) -> list[str]:
        """Place orders from the page; the order ids the page was answered with."""
        before = self.page.locator("#action-result").get_attribute("data-orders")
        self.page.select_option("#outcome", outcome)
        self.page.fill("#count", str(count))
        self.page.click("#place-button")
        self.page.wait_for_function(
            "before => (document.querySelector('#action-result').dataset.orders || null) !== before", arg=before,
            timeout=SAGA_TIMEOUT * 1000)
        orders = str(self.page.locator("#action-result").get_attribute("data-orders")).split()
        assert len(orders) == count
        return orders

    def order(self, order_id: str) -> dict[str, Any]:
        return dict(httpx.get(f"{self.order_url}/orders/{order_id}", headers=bearer(self.admin_token),
                              timeout=10).json())


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    from playwright.sync_api import sync_playwright

    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    directory = tmp_path_factory.mktemp("console")
    ports = {name: free_port() for name in ("ORDER", "USER", "PRODUCT", "CONSOLE")}
    env = {
        **os.environ,
        "REDIS_URL": TEST_REDIS_URL,
        **{f"SHOP_{name}_API_PORT": str(port) for name, port in ports.items() if name != "CONSOLE"},
        "SHOP_CONSOLE_PORT": str(ports["CONSOLE"]),
        "SHOP_DATABASE_URL": "redis",
        "SHOP_NOTIFICATION_LOG": str(directory / "notifications.log"),
        "SHOP_VAR_DIR": str(directory / "var"),
        "SHOP_ADMIN_EMAIL": ADMIN[0],
        "SHOP_ADMIN_PASSWORD": ADMIN[1],
        # Poison orders (card_crash) exist only with fault injection; one unfinished delivery makes a message poison,
        # so the test does not wait for five worker restarts.
        "SHOP_FAULT_INJECTION": "1",
        "SHOP_MAX_DELIVERIES": "1",
        "SHOP_LOG_MESSAGES": "false",
    }
    for name in ("BROKER_URL", "SHOP_BROKER_URL", "SHOP_AMQP_PREFIX"):
        env.pop(name, None)
    process = subprocess.Popen([sys.executable, "-m", "shop", "up"], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=None)
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        wait_until(lambda: process.poll() is not None or all(api_is_up(url) for url in urls.values()),
                   timeout=STARTUP_TIMEOUT, interval=0.2, message="`shop up` and its console to answer")
        assert process.poll() is None, f"`shop up` exited with code {process.returncode}"
        admin_token, _ = sign_in(urls["USER"], *ADMIN)
        (directory / "var").mkdir(exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(SAGA_TIMEOUT * 1000)
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield Console(urls["CONSOLE"], urls["ORDER"], directory / "var", admin_token, page, errors)
            browser.close()
    finally:
        stop_gracefully(process)
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def signed_in(console: Console) -> Console:
    console.page.goto(console.url)
    console.page.fill("#login-email", ADMIN[0])
    console.page.fill("#login-password", ADMIN[1])
    console.page.click("#login-button")
    console.page.wait_for_selector("#signed-in:not([hidden])")
    return console


def test_the_page_loads_live_with_no_console_errors(console: Console) -> None:
    console.page.goto(console.url)

    console.page.wait_for_selector("#connection.live")
    for service in ("order_service", "product_service", "payment_service", "notification_service"):
        console.page.wait_for_selector(f'#board tr[data-service="{service}"] td.workers:text-is("1")')
    console.screenshot("loaded")
    assert console.errors == []


def test_three_orders_placed_from_the_page_show_their_events_and_notifications_within_5_s(signed_in: Console) -> None:
    page = signed_in.page

    orders = signed_in.place("paid", 3)

    for order_id in orders:
        for event_type in PAID_SAGA:
            page.wait_for_selector(f'#events tr[data-order="{order_id}"][data-type="{event_type}"]',
                                   timeout=SHOWN_WITHIN * 1000)
        page.wait_for_selector(f'#notifications li[data-order="{order_id}"].OrderConfirmed',
                               timeout=SHOWN_WITHIN * 1000)
    signed_in.screenshot("orders")
    assert signed_in.errors == []


def test_stopped_payment_workers_let_the_queue_climb_and_started_ones_drain_it(signed_in: Console) -> None:
    page = signed_in.page
    page.click('#board tr[data-service="payment_service"] button.stop')
    page.wait_for_selector('#board tr[data-service="payment_service"] td.workers:text-is("0")')

    orders = signed_in.place("paid", 5)  # accepted while payments are down

    wait_until(lambda: int(signed_in.board("payment_service", "waiting")) >= len(orders), timeout=SAGA_TIMEOUT,
               interval=0.2, message="the payment queue to climb on the board")
    assert all(signed_in.order(order_id)["status"] == "PENDING" for order_id in orders)
    signed_in.screenshot("payments-stopped")

    page.click('#board tr[data-service="payment_service"] button.start')

    page.wait_for_selector('#board tr[data-service="payment_service"] td.workers:text-is("1")')
    wait_until(lambda: signed_in.board("payment_service", "waiting") == "0", timeout=SAGA_TIMEOUT, interval=0.2,
               message="the payment queue to drain on the board")
    wait_until(lambda: all(signed_in.order(order_id)["status"] == "CONFIRMED" for order_id in orders),
               timeout=SAGA_TIMEOUT, interval=0.2, message="every order accepted during the outage to be confirmed")
    for order_id in orders:
        page.wait_for_selector(f'#notifications li[data-order="{order_id}"]', timeout=SHOWN_WITHIN * 1000)
    signed_in.screenshot("payments-started")
    assert signed_in.errors == []


def test_a_poison_order_lands_in_the_dead_letter_panel(signed_in: Console) -> None:
    [order_id] = signed_in.place("poison", 1)

    row = signed_in.page.wait_for_selector(f'#dead-letters tr.dead-letter[data-order="{order_id}"]')

    assert row is not None and row.get_attribute("data-reason") == "poison message"
    assert signed_in.order(order_id)["status"] == "PENDING"  # never charged, never decided: waiting for a replay
    signed_in.screenshot("dead-letter")


def test_the_journey_of_an_order_lists_its_hops_in_causal_order(signed_in: Console) -> None:
    page = signed_in.page
    [order_id] = signed_in.place("declined", 1)
    page.wait_for_selector(f'#events tr[data-order="{order_id}"][data-type="NotificationSent"]')
    page.fill("#filter-order", order_id[:8])

    page.locator(f'#events tr[data-order="{order_id}"] a.order').first.click()

    page.wait_for_function("n => document.querySelectorAll('#journey-hops li.hop').length >= n", arg=6)
    hops = [(hop.get_attribute("data-type"), hop.get_attribute("data-event"), hop.get_attribute("data-cause"))
            for hop in page.locator("#journey-hops li.hop").element_handles()]
    seen: set[str | None] = set()
    for _, event_id, cause in hops:
        assert not cause or cause in seen, f"a hop before its cause: {hops}"
        seen.add(event_id)
    assert [event_type for event_type, _, _ in hops][:2] == ["OrderCreated", "StockReserved"]
    assert {"PaymentFailed", "OrderCancelled", "NotificationSent"} <= {event_type for event_type, _, _ in hops}
    assert page.locator("#journey-order").text_content() == order_id
    visible = page.locator("#events tbody tr:not([hidden])").evaluate_all("rows => rows.map(r => r.dataset.order)")
    assert visible and set(visible) == {order_id}  # the filter hides every other order's events
    signed_in.screenshot("journey")
    assert signed_in.errors == []
