"""Events, orders and products as tests need them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from events.catalog import Event, OrderItem, StockLevel, StockReserved
from events.envelope import Envelope
from events.http import Bus
from order_service.domain import CataloguedProduct, Order
from order_service.handlers import place_order
from order_service.store import catalogue, orders
from product_service.domain import Product
from product_service.store import products


def stock_reserved(payment_method: str = "card", total: str = "25.00") -> StockReserved:
    """The event the payment service charges on, for a fresh order, as the product service would publish it."""
    return StockReserved(
        order_id=uuid4(), customer_id="alice", total=Decimal(total), payment_method=payment_method,
        lines=(StockLevel(product_id="book", quantity=1, stock=99, revision=2),),
    )


def wrap(event: Event) -> Envelope:
    return Envelope.wrap(event, producer="tests", correlation_id=getattr(event, "order_id", None) or uuid4())


def stock_product(bus: Bus, product_id: str = "book", price: str = "25.00", stock: int = 1_000_000) -> None:
    """A product in the product service's store and in the order service's catalogue, written straight into both
    (a shortcut for tests of the bus: no ProductCreated is published, so no queue holds anything extra)."""
    uow = bus.unit_of_work("product_service")
    products(uow).get(product_id)  # read first: the commit checks the version of what it overwrites
    products(uow).save(Product(id=product_id, name=product_id.title(), price=Decimal(price), stock=stock))
    bus.commit(uow)
    uow = bus.unit_of_work("order_service")
    catalogue(uow).get(product_id)
    catalogue(uow).save(CataloguedProduct(product_id=product_id, name=product_id.title(), price=Decimal(price),
                                          price_revision=1, stock=stock, stock_revision=1))
    bus.commit(uow)


def place(bus: Bus, payment_method: str = "card", price: str = "25.00") -> Order:
    """What POST /orders does: the order document and its OrderCreated, committed in one step (for a product
    stocked at `price`)."""
    stock_product(bus, price=price)
    uow = bus.unit_of_work("order_service")
    order = place_order(uow, customer_id="alice", items=[OrderItem(product_id="book", quantity=1)],
                        payment_method=payment_method)
    bus.commit(uow)
    return order


def stored_order(bus: Bus, order_id: UUID) -> Order | None:
    return orders(bus.unit_of_work("order_service")).get(order_id)


def as_dict(model: Any) -> dict[str, Any]:
    return dict(model.model_dump(mode="json"))
