"""The in-process shop: every service on the in-process bus, as the unit tests drive it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from events.bus import build_dependencies
from events.catalog import Event, OrderItem
from events.memory import InMemoryBus
from notification_service.notification_log import read_notifications
from order_service.domain import Order
from order_service.handlers import place_order
from order_service.store import orders
from payment_service.domain import Payment
from payment_service.gateway import InMemoryLedger
from payment_service.store import payments
from product_service.handlers import create_product
from product_service.store import products
from shop.services import SERVICES


class Shop:
    """A bus with every service subscribed, a catalogue of products, and what a test wants to look at. `published`
    starts empty after the catalogue is set up, so it shows one order's journey."""

    def __init__(self, log_path: Path, stock: int = 1000) -> None:
        self.bus = InMemoryBus()
        self.log_path = log_path
        self.ledger = InMemoryLedger()
        for spec in SERVICES.values():
            self.bus.subscribe(spec, build_dependencies(spec, {"ledger": self.ledger}))
        for product_id, price in (("book", "12.50"), ("pen", "0.99")):
            self.create_product(product_id, price, stock)
        self.bus.published.clear()

    def create_product(self, product_id: str, price: str, stock: int) -> None:
        uow = self.bus.unit_of_work("product_service")
        create_product(uow, product_id=product_id, name=product_id.title(), price=Decimal(price), stock=stock)
        self.bus.commit(uow)

    def stock(self, product_id: str) -> int:
        product = products(self.bus.unit_of_work("product_service")).get(product_id)
        assert product is not None
        return product.stock

    def place(self, payment_method: str = "card", product_id: str = "book", quantity: int = 2,
              customer_id: str = "alice") -> Order:
        uow = self.bus.unit_of_work("order_service")
        order = place_order(
            uow,
            customer_id=customer_id,
            items=[OrderItem(product_id=product_id, quantity=quantity)],
            payment_method=payment_method,
        )
        self.bus.commit(uow)
        return order

    def order(self, order_id: UUID) -> Order:
        order = orders(self.bus.unit_of_work("order_service")).get(order_id)
        assert order is not None
        return order

    def payment(self, order_id: UUID) -> Payment | None:
        return payments(self.bus.unit_of_work("payment_service")).get(order_id)

    def notifications(self) -> list[dict[str, Any]]:
        return read_notifications(self.log_path)

    def published_types(self) -> list[str]:
        return [envelope.type for envelope in self.bus.published]

    def publish(self, event: Event, correlation_id: UUID) -> None:
        """An event from outside any handler (a late or stray message)."""
        uow = self.bus.unit_of_work("tests")
        uow.publish(event, correlation_id=correlation_id)
        self.bus.commit(uow)

    def redeliver_everything(self) -> None:
        """Every event published so far, delivered again to every handler subscribed to it (what a broker does after
        a crash, at worst)."""
        for envelope in list(self.bus.published):
            self.bus.redeliver(envelope)


def in_process_bus() -> InMemoryBus:
    """Every service subscribed to one in-process bus with in-process resources (what the unit tests' APIs use)."""
    bus = InMemoryBus()
    ledger = InMemoryLedger()
    for spec in SERVICES.values():
        bus.subscribe(spec, build_dependencies(spec, {"ledger": ledger}))
    return bus
