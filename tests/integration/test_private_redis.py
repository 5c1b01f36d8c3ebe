"""Runs against a private redis-server (AOF, password) that the test can kill and restart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from events.catalog import OrderItem
from events.settings import BusSettings
from notification_service.notification_log import read_notifications
from order_service.handlers import place_order
from payment_service.gateway import RedisLedger
from shop.bootstrap import Wiring, bootstrap, declare_topology
from shop.redis_server import RedisServer
from shop.services import CONSUMERS
from tests.support.builders import stock_product
from tests.support.waiting import wait_until


@pytest.fixture
def private_redis(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Requests `redis_url` first so that its REDIS_URL is the one overridden here."""
    server = RedisServer(tmp_path / "redis", password="s3cret-for-tests").start()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("SHOP_NOTIFICATION_LOG", str(tmp_path / "notifications.log"))
    monkeypatch.setenv("SHOP_VISIBILITY_TIMEOUT", "4")
    yield server
    server.stop()


@pytest.fixture
def new_wiring(private_redis: RedisServer) -> Iterator[Callable[[], Wiring]]:
    """`bootstrap` on the private Redis (after its REDIS_URL is set), as many times as a test needs (a wiring from
    before a restart is not reused after it); every one is closed afterwards."""
    made: list[Wiring] = []

    def new() -> Wiring:
        made.append(bootstrap(BusSettings()))
        return made[-1]

    yield new
    for wiring in made:
        wiring.close()


def place_orders(wiring: Wiring, count: int, stock: bool = True) -> list[str]:
    """`stock`: write the product first; not while workers run, whose reservations would race with that write."""
    ids = []
    if stock:
        stock_product(wiring, price="5.00")
    for n in range(count):
        uow = wiring.unit_of_work("order_service")
        method = "card_declined" if n % 5 == 0 else "card"
        order = place_order(uow, customer_id=f"c{n}", payment_method=method,
                            items=[OrderItem(product_id="book", quantity=1)])
        wiring.commit(uow)
        ids.append(str(order.id))
    return ids


def documents(wiring: Wiring, service: str, collection: str) -> dict[str, dict]:
    return wiring.store(service).documents(service, collection)


def test_password_protected_redis_works_and_a_wrong_password_is_refused(private_redis, new_wiring, start_worker):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=private_redis.port, password="wrong").ping()
    wiring = new_wiring()
    declare_topology(wiring.settings)
    [order_id] = place_orders(wiring, 1)
    start_worker("product_service")
    start_worker("payment_service")
    wait_until(lambda: order_id in documents(wiring, "payment_service", "payment"), timeout=30)


def test_redis_restart_mid_run_loses_nothing_and_workers_reconnect(private_redis, new_wiring, start_worker, tmp_path):
    wiring = new_wiring()
    declare_topology(wiring.settings)
    first = place_orders(wiring, 40)
    for service in CONSUMERS:
        start_worker(service)
    wait_until(lambda: len(documents(wiring, "payment_service", "payment")) >= 5, timeout=30)

    private_redis.restart()  # kill -9 and start again on the same AOF file
    wiring = new_wiring()
    second = place_orders(wiring, 20, stock=False)  # stocked before the restart, kept in the AOF

    def all_notified() -> bool:
        orders = documents(wiring, "order_service", "order")
        return all(orders.get(order_id, {}).get("notified_at") for order_id in first + second)

    wait_until(all_notified, timeout=90, interval=0.25, message="every order to be notified after the restart")
    orders = documents(wiring, "order_service", "order")
    assert {orders[o]["status"] for o in first + second} == {"CONFIRMED", "CANCELLED"}
    lines = read_notifications(tmp_path / "notifications.log")
    per_order = [line["order_id"] for line in lines]
    assert sorted(per_order) == sorted(first + second), "exactly one notification per order"
    charges = [c.decode() for c in wiring.redis.lrange(RedisLedger.CHARGES, 0, -1)]
    assert len(charges) == len(set(charges)) == sum(orders[o]["status"] == "CONFIRMED" for o in first + second)
