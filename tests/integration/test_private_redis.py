"""Runs against a private redis-server (AOF, password) that the test can kill and restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from events.catalog import OrderItem
from events.redis_bus import RedisPublisher, declare_topology, scan_documents
from events.settings import BusSettings
from notification_service.notification_log import read_notifications
from order_service.handlers import place_order
from payment_service.gateway import RedisLedger
from shop.redis_server import RedisServer
from shop.services import CONSUMERS, SERVICES
from tests.helpers import stock_product, wait_until


@pytest.fixture
def private_redis(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Requests `redis_url` first so that its REDIS_URL is the one overridden here."""
    server = RedisServer(tmp_path / "redis", password="s3cret-for-tests").start()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("SHOP_NOTIFICATION_LOG", str(tmp_path / "notifications.log"))
    monkeypatch.setenv("SHOP_VISIBILITY_TIMEOUT", "4")
    yield server
    server.stop()


def place_orders(publisher: RedisPublisher, count: int) -> list[str]:
    ids = []
    stock_product(publisher, price="5.00")
    for n in range(count):
        uow = publisher.unit_of_work("order_service")
        method = "card_declined" if n % 5 == 0 else "card"
        order = place_order(uow, customer_id=f"c{n}", payment_method=method,
                            items=[OrderItem(product_id="book", quantity=1)])
        uow.commit()
        ids.append(str(order.id))
    return ids


def test_password_protected_redis_works_and_a_wrong_password_is_refused(private_redis, start_worker):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=private_redis.port, password="wrong").ping()
    settings = BusSettings()
    declare_topology(settings, list(SERVICES.values()))
    [order_id] = place_orders(RedisPublisher(settings), 1)
    start_worker("product_service")
    start_worker("payment_service")
    client = redis.Redis.from_url(private_redis.url)
    wait_until(lambda: order_id in scan_documents(client, "payment_service", "payment"), timeout=30)


def test_redis_restart_mid_run_loses_nothing_and_workers_reconnect(private_redis, start_worker, tmp_path):
    settings = BusSettings()
    declare_topology(settings, list(SERVICES.values()))
    client = redis.Redis.from_url(private_redis.url)
    first = place_orders(RedisPublisher(settings), 40)
    for service in CONSUMERS:
        start_worker(service)
    wait_until(lambda: len(scan_documents(client, "payment_service", "payment")) >= 5, timeout=30)

    private_redis.restart()  # kill -9 and start again on the same AOF file
    client = redis.Redis.from_url(private_redis.url)
    second = place_orders(RedisPublisher(BusSettings()), 20)

    def all_notified() -> bool:
        orders = scan_documents(client, "order_service", "order")
        return all(orders.get(order_id, {}).get("notified_at") for order_id in first + second)

    wait_until(all_notified, timeout=90, interval=0.25, message="every order to be notified after the restart")
    orders = scan_documents(client, "order_service", "order")
    assert {orders[o]["status"] for o in first + second} == {"CONFIRMED", "CANCELLED"}
    lines = read_notifications(tmp_path / "notifications.log")
    per_order = [line["order_id"] for line in lines]
    assert sorted(per_order) == sorted(first + second), "exactly one notification per order"
    charges = [c.decode() for c in client.lrange(RedisLedger.CHARGES, 0, -1)]
    assert len(charges) == len(set(charges)) == sum(orders[o]["status"] == "CONFIRMED" for o in first + second)
