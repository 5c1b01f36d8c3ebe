"""One contract, two wirings: every test runs against `shop up` (three celery workers + the API over Redis) and
against `shop monolith` (the same handlers in one process), started as real processes and driven over HTTP.

What a client can observe must not depend on the wiring: statuses, error answers, and exactly one notification per
order. Processes start once per mode (a module-scoped, parametrized fixture), since starting four Python processes
costs seconds on a small machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis

from notification_service.notification_log import read_notifications
from shop.embedded_redis import free_port
from tests.conftest import TEST_REDIS_URL
from tests.helpers import stop_process, wait_until

MODES = {"microservices": "up", "monolith": "monolith"}
STARTUP_TIMEOUT = 90.0
SAGA_TIMEOUT = 60.0


@dataclass
class RunningShop:
    mode: str
    base_url: str
    notification_log: Path
    process: subprocess.Popen

    def place(self, payment_method: str = "card", unit_price: str = "19.99", quantity: int = 1) -> dict[str, Any]:
        body = {
            "customer_id": f"customer-{uuid4().hex[:6]}",
            "items": [{"product_id": "book", "quantity": quantity, "unit_price": unit_price}],
            "payment_method": payment_method,
        }
        response = httpx.post(f"{self.base_url}/orders", json=body, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()

    def order(self, order_id: str) -> httpx.Response:
        return httpx.get(f"{self.base_url}/orders/{order_id}", timeout=10)

    def settled(self, order_id: str) -> dict[str, Any]:
        """The order once it left PENDING (fails the test after SAGA_TIMEOUT)."""

        def settled_order() -> dict[str, Any] | None:
            order = self.order(order_id).json()
            return order if order["status"] != "PENDING" else None

        return wait_until(settled_order, timeout=SAGA_TIMEOUT, interval=0.1, message=f"order {order_id} to settle")

    def notifications_for(self, order_ids: set[str]) -> list[dict[str, Any]]:
        return [line for line in read_notifications(self.notification_log) if line["order_id"] in order_ids]


def _api_is_up(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stop_gracefully(process: subprocess.Popen) -> None:
    """SIGINT first: `shop up` stops its supervised children only on Ctrl-C (its children run in their own
    sessions, so a signal to this process group alone would orphan them); the monolith drains on it. Then
    `stop_process` makes sure the group is gone."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    stop_process(process)


@pytest.fixture(scope="module", params=list(MODES))
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShop]:
    mode = request.param
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"these tests need Redis at {TEST_REDIS_URL}")
    client.flushdb()
    directory = tmp_path_factory.mktemp(mode)
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": TEST_REDIS_URL,
        "SHOP_ORDER_API_PORT": str(port),
        "SHOP_NOTIFICATION_LOG": str(directory / "notifications.log"),
        "SHOP_VAR_DIR": str(directory / "var"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "shop", MODES[mode]], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=None,
    )
    running = RunningShop(mode, f"http://127.0.0.1:{port}", directory / "notifications.log", process)
    try:
        wait_until(
            lambda: process.poll() is not None or _api_is_up(running.base_url),
            timeout=STARTUP_TIMEOUT, interval=0.2, message=f"`shop {MODES[mode]}` to answer /health",
        )
        assert process.poll() is None, f"`shop {MODES[mode]}` exited with code {process.returncode}"
        yield running
    finally:
        _stop_gracefully(process)
        client.flushdb()
        client.close()


def test_a_paid_order_is_confirmed(shop: RunningShop) -> None:
    placed = shop.place("card", unit_price="12.50", quantity=2)
    assert placed["status"] == "PENDING"
    assert Decimal(placed["total"]) == Decimal("25.00")

    order = shop.settled(placed["id"])

    assert order["status"] == "CONFIRMED"
    assert order["reason"] is None


def test_a_declined_card_cancels_the_order(shop: RunningShop) -> None:
    order = shop.settled(shop.place("card_declined")["id"])

    assert order["status"] == "CANCELLED"
    assert order["reason"] == "card declined"


def test_a_total_above_the_gateway_limit_cancels_the_order(shop: RunningShop) -> None:
    order = shop.settled(shop.place("card", unit_price="10000.01")["id"])

    assert order["status"] == "CANCELLED"
    assert "insufficient funds" in order["reason"]


def test_an_unknown_order_is_not_found(shop: RunningShop) -> None:
    assert shop.order(str(uuid4())).status_code == 404


def test_an_invalid_order_is_refused_with_readable_problems(shop: RunningShop) -> None:
    body = {"customer_id": "", "items": [{"product_id": "book", "quantity": 0, "unit_price": 1.5}], "extra": 1}

    response = httpx.post(f"{shop.base_url}/orders", json=body, timeout=10)

    assert response.status_code == 422
    answer = response.json()
    assert answer["error"] == "invalid request"
    problems = "\n".join(answer["problems"])
    for field in ("customer_id", "items.0.quantity", "items.0.unit_price", "payment_method", "extra"):
        assert field in problems, f"{field} missing from {answer['problems']}"


def test_every_order_is_notified_exactly_once(shop: RunningShop) -> None:
    methods = ["card", "card_declined", "card", "card", "card_declined", "card"]
    placed = {shop.place(method)["id"] for method in methods}

    wait_until(
        lambda: {line["order_id"] for line in shop.notifications_for(placed)} == placed,
        timeout=SAGA_TIMEOUT, interval=0.1, message="a notification for every order",
    )
    # The saga goes on after the notification (NotificationSent -> order records it): once every order shows it,
    # any duplicate would have been written already.
    wait_until(
        lambda: all(shop.order(order_id).json()["notified_at"] for order_id in placed),
        timeout=SAGA_TIMEOUT, interval=0.1, message="every order to record its notification",
    )

    lines = shop.notifications_for(placed)
    assert sorted(line["order_id"] for line in lines) == sorted(placed)
    assert all(line["type"] in {"OrderConfirmed", "OrderCancelled"} for line in lines)
