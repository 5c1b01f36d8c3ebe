"""One contract, every wiring: each test runs against `shop up` (four celery workers + three APIs) with each service on
its own SQLite file (the default), on its own PostgreSQL database, and on the Redis store beside the broker; the same
with RabbitMQ as the broker; and `shop monolith` (the same handlers and APIs in one process, one database) in both
dispatch modes. All are started as real processes and driven over HTTP; the PostgreSQL and RabbitMQ variants are
skipped, with the reason, where no server answers.

What a client can observe must not depend on the wiring: statuses, error answers, and exactly one notification per
order. Processes start once per mode (a module-scoped, parametrized fixture), since starting seven Python processes
costs seconds on a small machine; the catalogue is seeded once, through the product API, each test using products
of its own so that stock levels stay predictable.
"""

from __future__ import annotations

import os
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
from shop.client import bearer, register, sign_in
from shop.embedded_redis import free_port
from shop.seeding import NewProduct, seed_products_over_http
from tests.support.brokers import TEST_REDIS_URL, broker_env, delete_rabbitmq_topology, rabbitmq_missing
from tests.support.databases import POSTGRES_URL, drop_postgres_databases, postgres_missing
from tests.support.waiting import api_is_up, stop_gracefully, wait_until

MODES = {
    "microservices-sqlite": "up",
    "microservices-postgres": "up",
    "microservices-redis-store": "up",
    "microservices-rabbitmq": "up",
    "monolith": "monolith",
    "monolith-queued": "monolith",
}
"""mode -> `shop` command. The stores: a SQLite file per service unless the mode names another; "-rabbitmq" is `shop up`
with BROKER_URL=amqp://...; the monolith's one database is a SQLite file."""
STARTUP_TIMEOUT = 90.0
SAGA_TIMEOUT = 60.0


CATALOGUE = [
    NewProduct("book", "Book", "19.99", 100_000),
    NewProduct("novel", "Novel", "12.50", 100),
    NewProduct("piano", "Piano", "10000.01", 100),
    NewProduct("lamp", "Lamp", "49.90", 10),
    NewProduct("vase", "Rare vase", "300.00", 1),
]


ADMIN = ("admin@example.com", "admin-password-of-the-contract-suite")


@dataclass
class RunningShop:
    mode: str
    base_url: str
    user_url: str
    product_url: str
    notification_log: Path
    process: subprocess.Popen
    customer: tuple[str, str] = ("", "")
    """(access token, user id) of the customer the tests order as, unless they sign in as another"""

    def place(self, payment_method: str = "card", product_id: str = "book", quantity: int = 1,
              as_customer: tuple[str, str] | None = None) -> dict[str, Any]:
        token, customer_id = as_customer or self.customer
        body = {
            "customer_id": customer_id,
            "items": [{"product_id": product_id, "quantity": quantity}],
            "payment_method": payment_method,
        }
        response = httpx.post(f"{self.base_url}/orders", json=body, headers=bearer(token), timeout=10)
        # 202: accepted, the saga follows; 201: the monolith's direct calls settled it before answering.
        expected = 201 if self.mode == "monolith" else 202
        assert response.status_code == expected, response.text
        order = dict(response.json())
        assert (order["status"] != "PENDING") == (expected == 201), order
        return order

    def product(self, product_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.product_url}/products/{product_id}", timeout=10).json()

    def catalogued(self, product_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/catalogue/{product_id}", timeout=10).json()

    def order(self, order_id: str) -> httpx.Response:
        return httpx.get(f"{self.base_url}/orders/{order_id}", headers=bearer(self.customer[0]), timeout=10)

    def settled(self, order_id: str) -> dict[str, Any]:
        """The order once it left PENDING (fails the test after SAGA_TIMEOUT)."""

        def settled_order() -> dict[str, Any] | None:
            order = self.order(order_id).json()
            return order if order["status"] != "PENDING" else None

        return wait_until(settled_order, timeout=SAGA_TIMEOUT, interval=0.1, message=f"order {order_id} to settle")

    def notifications_for(self, order_ids: set[str]) -> list[dict[str, Any]]:
        return [line for line in read_notifications(self.notification_log) if line["order_id"] in order_ids]


@pytest.fixture(scope="module", params=list(MODES))
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShop]:
    mode = request.param
    broker = "rabbitmq" if mode.endswith("-rabbitmq") else "redis"
    if broker == "rabbitmq" and (missing := rabbitmq_missing()):
        pytest.skip(missing)
    if mode.endswith("-postgres") and (missing := postgres_missing()):
        pytest.skip(missing)
    run = uuid4().hex[:8]
    postgres = POSTGRES_URL.rsplit("/", 1)[0] + f"/shop_e2e_{run}_{{service}}"
    stores = {
        "microservices-postgres": {"SHOP_DATABASE_URL": postgres},
        "microservices-redis-store": {"SHOP_DATABASE_URL": "redis"},
        "monolith-queued": {"SHOP_MONOLITH_DISPATCH": "queued"},
    }.get(mode, {})
    amqp_prefix = f"e2e-{uuid4().hex[:8]}."
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"these tests need Redis at {TEST_REDIS_URL}")
    client.flushdb()
    directory = tmp_path_factory.mktemp(mode)
    ports = {"ORDER": free_port(), "USER": free_port(), "PRODUCT": free_port()}
    env = {
        **os.environ,
        "REDIS_URL": TEST_REDIS_URL,
        **{f"SHOP_{name}_API_PORT": str(port) for name, port in ports.items()},
        "SHOP_NOTIFICATION_LOG": str(directory / "notifications.log"),
        "SHOP_VAR_DIR": str(directory / "var"),
        **broker_env(broker, amqp_prefix),
        **stores,
        "SHOP_ADMIN_EMAIL": ADMIN[0],
        "SHOP_ADMIN_PASSWORD": ADMIN[1],
    }
    for name in ("SHOP_DATABASE_URL", "SHOP_MONOLITH_DISPATCH"):
        if name not in stores:
            env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "shop", MODES[mode]], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=None,
    )
    # The monolith serves every API on the order API's port.
    url = {name: f"http://127.0.0.1:{ports[name if MODES[mode] == 'up' else 'ORDER']}" for name in ports}
    running = RunningShop(mode, url["ORDER"], url["USER"], url["PRODUCT"], directory / "notifications.log", process)
    try:
        wait_until(
            lambda: process.poll() is not None or all(api_is_up(base) for base in url.values()),
            timeout=STARTUP_TIMEOUT, interval=0.2, message=f"`shop {MODES[mode]}` to answer /health",
        )
        assert process.poll() is None, f"`shop {MODES[mode]}` exited with code {process.returncode}"
        admin_token, _ = sign_in(running.user_url, *ADMIN)
        register(running.user_url, "Casey Customer", "casey@example.com", "casey's password")
        running.customer = sign_in(running.user_url, "casey@example.com", "casey's password")
        seed_products_over_http(running.product_url, running.base_url, CATALOGUE, admin_token, timeout=SAGA_TIMEOUT)
        yield running
    finally:
        stop_gracefully(process)
        client.flushdb()
        client.close()
        if broker == "rabbitmq":
            from shop.services import SERVICES

            delete_rabbitmq_topology(amqp_prefix, list(SERVICES.values()))
        if mode.endswith("-postgres"):
            drop_postgres_databases(f"shop_e2e_{run}_")


def test_a_paid_order_is_confirmed(shop: RunningShop) -> None:
    placed = shop.place("card", product_id="novel", quantity=2)
    assert Decimal(placed["total"]) == Decimal("25.00")

    order = shop.settled(placed["id"])

    assert order["status"] == "CONFIRMED"
    assert order["reason"] is None


def test_a_declined_card_cancels_the_order(shop: RunningShop) -> None:
    order = shop.settled(shop.place("card_declined")["id"])

    assert order["status"] == "CANCELLED"
    assert order["reason"] == "card declined"


def test_a_total_above_the_gateway_limit_cancels_the_order(shop: RunningShop) -> None:
    order = shop.settled(shop.place("card", product_id="piano")["id"])

    assert order["status"] == "CANCELLED"
    assert "insufficient funds" in order["reason"]


def test_an_unknown_order_is_not_found(shop: RunningShop) -> None:
    assert shop.order(str(uuid4())).status_code == 404


def test_an_order_for_an_unknown_product_is_refused_at_the_door(shop: RunningShop) -> None:
    body = {"customer_id": shop.customer[1], "items": [{"product_id": "unicorn", "quantity": 1}],
            "payment_method": "card"}

    response = httpx.post(f"{shop.base_url}/orders", json=body, headers=bearer(shop.customer[0]), timeout=10)

    assert response.status_code == 422
    assert response.json()["problems"] == ["items.0.product_id: unknown product 'unicorn'"]


def test_an_order_beyond_the_stock_is_cancelled_with_the_reason(shop: RunningShop) -> None:
    order = shop.settled(shop.place("card", product_id="vase", quantity=2)["id"])

    assert order["status"] == "CANCELLED"
    assert order["reason"] == "out of stock: Rare vase (2 wanted, 1 left)"
    assert shop.product("vase")["stock"] == 1


def test_a_failed_payment_puts_the_stock_back(shop: RunningShop) -> None:
    placed = [shop.place("card_declined", product_id="lamp", quantity=3) for _ in range(2)]

    for order in placed:
        assert shop.settled(order["id"])["status"] == "CANCELLED"
    # Each order took 3 and gave them back: stock 10 again, at revision 1 + 2 reservations + 2 releases. The order
    # service's catalogue shows the same revision, so both StockReleased events reached it too.
    wait_until(lambda: shop.catalogued("lamp")["stock_revision"] == 5, timeout=SAGA_TIMEOUT, interval=0.1,
               message="both StockReleased in the order service's catalogue")
    assert shop.product("lamp")["stock"] == 10 and shop.catalogued("lamp")["stock"] == 10


def test_a_registered_customer_is_notified_by_name(shop: RunningShop) -> None:
    email = f"ada-{uuid4().hex[:6]}@example.com"
    registered = httpx.post(f"{shop.user_url}/users", json={"name": "Ada Lovelace", "email": email,
                                                           "password": "analytical engine"}, timeout=10)
    assert registered.status_code == 201, registered.text
    again = httpx.post(f"{shop.user_url}/users", json={"name": "Ada", "email": email, "password": "difference engine"},
                       timeout=10)
    assert again.status_code == 409

    placed = shop.place("card", as_customer=sign_in(shop.user_url, email, "analytical engine"))

    [line] = wait_until(lambda: shop.notifications_for({placed["id"]}), timeout=SAGA_TIMEOUT, interval=0.1,
                        message="the notification")
    assert line["to"] == f"Ada Lovelace <{email}>"
    assert line["message"].startswith("Hello Ada Lovelace,")


def test_an_invalid_order_is_refused_with_readable_problems(shop: RunningShop) -> None:
    body = {"customer_id": "", "items": [{"product_id": "book", "quantity": 0, "unit_price": "1.50"}], "extra": 1}

    response = httpx.post(f"{shop.base_url}/orders", json=body, headers=bearer(shop.customer[0]), timeout=10)

    assert response.status_code == 422
    answer = response.json()
    assert response.headers["content-type"] == "application/problem+json" and answer["status"] == 422
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
