"""Every published event is appended to the event log, in the same atomic step that publishes it."""

from __future__ import annotations

import json

from events.catalog import OrderItem
from order_service.handlers import place_order
from shop.bootstrap import Wiring, declare_topology
from tests.support.builders import stock_product


def test_placing_an_order_logs_its_order_created_with_the_signed_envelope(wiring: Wiring) -> None:
    declare_topology(wiring.settings)
    stock_product(wiring, price="3.00")
    uow = wiring.unit_of_work("order_service")
    order = place_order(uow, customer_id="kim", payment_method="card", items=[OrderItem(product_id="book", quantity=1)])
    uow.commit()

    [(type_name, raw, signature)] = list(wiring.event_log.history())
    assert type_name == "OrderCreated"
    envelope = json.loads(raw)
    assert envelope["correlation_id"] == str(order.id)
    assert envelope["payload"]["order_id"] == str(order.id)
    assert wiring.keys.verify("order_service", raw.encode(), signature)
    assert not wiring.keys.verify("product_service", raw.encode(), signature)
    assert wiring.event_log.of(str(order.id)) == [envelope]
