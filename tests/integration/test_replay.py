"""`shop replay`: a service's projections rebuilt from the event log equal the ones its worker built live."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
from typer.testing import CliRunner

from events.catalog import OrderItem
from events.consumer import in_flight
from events.keys import Keys
from events.redis_bus import RedisPublisher, declare_topology, scan_documents
from events.settings import BusSettings
from order_service.handlers import place_order
from order_service.service import SERVICE as ORDER_SERVICE
from order_service.store import CATALOGUE, Orders
from product_service.handlers import change_price
from shop.cli import app
from shop.replay import replay
from shop.seeding import NewProduct, seed_products
from shop.services import SERVICES
from tests.helpers import wait_until

pytestmark = pytest.mark.usefixtures("redis_url")
DEADLINE = 60.0


def catalogue(client: redis.Redis) -> dict[str, dict]:
    return scan_documents(client, "order_service", CATALOGUE)


def test_a_fresh_catalogue_replayed_from_the_log_equals_the_live_one(redis_client: redis.Redis, start_worker):
    settings = BusSettings()
    declare_topology(settings, list(SERVICES.values()))
    for service in ("order_service", "product_service", "payment_service"):
        start_worker(service)
    publisher = RedisPublisher(settings)
    seed_products(publisher, [NewProduct("lamp", "Lamp", "49.90", 10), NewProduct("mug", "Mug", "7.00", 5)],
                  timeout=DEADLINE)
    uow = publisher.unit_of_work("product_service")
    change_price(uow, product_id="mug", price=Decimal("8.00"))
    uow.commit()
    wait_until(lambda: catalogue(redis_client)["mug"]["price"] == "8.00", DEADLINE, message="the new price")
    orders = []
    for method in ("card", "card_declined"):  # one reservation kept, one released
        uow = publisher.unit_of_work("order_service")
        orders.append(place_order(uow, customer_id="kim", payment_method=method,
                                  items=[OrderItem(product_id="lamp", quantity=2), OrderItem(product_id="mug", quantity=1)]))
        uow.commit()

    def settled() -> bool:
        return (all(Orders(publisher.unit_of_work("order_service")).get(order.id).status != "PENDING"
                    for order in orders)
                and catalogue(redis_client)["lamp"]["stock_revision"] == 4  # created, reserved twice, released once
                and redis_client.llen("order_service") == 0 and in_flight(redis_client, "order_service") == 0)

    wait_until(settled, DEADLINE, interval=0.1, message="both orders settled and the catalogue up to date")
    live = catalogue(redis_client)
    assert (live["lamp"]["stock"], live["mug"]["stock"], live["mug"]["price"]) == (8, 4, "8.00")

    redis_client.delete(*(Keys.document("order_service", CATALOGUE, product_id) for product_id in live))
    assert catalogue(redis_client) == {}
    first = replay(ORDER_SERVICE, settings, rebuild=True)

    assert catalogue(redis_client) == live
    # ProductCreated x2, ProductPriceChanged, StockReserved x2, StockReleased: only what the projection handles.
    assert first.replayed == 6 and first.rejected == 0

    second = replay(ORDER_SERVICE, settings)
    assert (second.replayed, second.already_replayed) == (0, 6)
    assert catalogue(redis_client) == live


def test_shop_replay_refuses_a_service_without_projections(redis_url: str):
    result = CliRunner().invoke(app, ["replay", "payment_service"])
    assert result.exit_code == 2 and "keeps no projection" in result.output
