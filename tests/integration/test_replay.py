"""`shop replay`: a service's projections rebuilt from the event log equal the ones its worker built live."""

from __future__ import annotations

from decimal import Decimal

import pytest
from typer.testing import CliRunner

from events.adapters.redis.worker import in_flight
from events.catalog import OrderItem
from order_service.handlers import place_order
from order_service.service import SERVICE as ORDER_SERVICE
from order_service.store import CATALOGUE, orders
from product_service.handlers import change_price
from shop.bootstrap import Wiring, declare_topology
from shop.cli import app
from shop.replay import replay
from shop.seeding import NewProduct, seed_products
from tests.support.waiting import wait_until

DEADLINE = 60.0


def catalogue(wiring: Wiring) -> dict[str, dict]:
    return wiring.store("order_service").documents("order_service", CATALOGUE)


def test_a_fresh_catalogue_replayed_from_the_log_equals_the_live_one(wiring: Wiring, start_worker):
    declare_topology(wiring.settings)
    for service in ("order_service", "product_service", "payment_service"):
        start_worker(service)
    seed_products(wiring, [NewProduct("lamp", "Lamp", "49.90", 10), NewProduct("mug", "Mug", "7.00", 5)],
                  timeout=DEADLINE)
    uow = wiring.unit_of_work("product_service")
    change_price(uow, product_id="mug", price=Decimal("8.00"))
    uow.commit()
    wait_until(lambda: catalogue(wiring)["mug"]["price"] == "8.00", DEADLINE, message="the new price")
    placed = []
    for method in ("card", "card_declined"):  # one reservation kept, one released
        uow = wiring.unit_of_work("order_service")
        items = [OrderItem(product_id="lamp", quantity=2), OrderItem(product_id="mug", quantity=1)]
        placed.append(place_order(uow, customer_id="kim", payment_method=method, items=items))
        uow.commit()

    def settled() -> bool:
        return (all(orders(wiring.unit_of_work("order_service")).get(order.id).status != "PENDING"
                    for order in placed)
                and catalogue(wiring)["lamp"]["stock_revision"] == 4  # created, reserved twice, released once
                and wiring.redis.llen("order_service") == 0 and in_flight(wiring.redis, "order_service") == 0)

    wait_until(settled, DEADLINE, interval=0.1, message="both orders settled and the catalogue up to date")
    live = catalogue(wiring)
    assert (live["lamp"]["stock"], live["mug"]["stock"], live["mug"]["price"]) == (8, 4, "8.00")

    wiring.store("order_service").forget("order_service", CATALOGUE)
    assert catalogue(wiring) == {}
    first = replay(ORDER_SERVICE, wiring, rebuild=True)

    assert catalogue(wiring) == live
    # ProductCreated x2, ProductPriceChanged, StockReserved x2, StockReleased: only what the projection handles.
    assert first.replayed == 6 and first.rejected == 0

    second = replay(ORDER_SERVICE, wiring)
    assert (second.replayed, second.already_replayed) == (0, 6)
    assert catalogue(wiring) == live


@pytest.mark.usefixtures("redis_url")
def test_shop_replay_refuses_a_service_without_projections():
    result = CliRunner().invoke(app, ["replay", "payment_service"])
    assert result.exit_code == 2 and "keeps no projection" in result.output
