"""Every published event is appended to the event log, in the same atomic step that publishes it."""

from __future__ import annotations

import json

import pytest

from events.catalog import OrderItem
from events.keys import Keys
from events.redis_bus import RedisPublisher, declare_topology
from events.settings import BusSettings
from order_service.handlers import place_order
from shop.services import SERVICES
from tests.helpers import stock_product


@pytest.mark.usefixtures("redis_url")
def test_placing_an_order_logs_its_order_created_with_the_signed_envelope(redis_client) -> None:
    settings = BusSettings()
    declare_topology(settings, list(SERVICES.values()))
    publisher = RedisPublisher(settings)
    stock_product(publisher, price="3.00")
    uow = publisher.unit_of_work("order_service")
    order = place_order(uow, customer_id="kim", payment_method="card", items=[OrderItem(product_id="book", quantity=1)])
    uow.commit()

    [(_, fields)] = redis_client.xrange(Keys.event_log())
    assert fields[b"type"] == b"OrderCreated"
    assert fields[b"correlation_id"] == str(order.id).encode()
    envelope = json.loads(fields[b"envelope"])
    assert envelope["payload"]["order_id"] == str(order.id)
    assert len(fields[b"signature"]) == 64
