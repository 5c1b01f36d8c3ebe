"""Events, orders and products as tests need them."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from events.adapters.ed25519.keyring import KeyRing
from events.catalog import Event, OrderItem, StockLevel, StockReserved
from events.envelope import Envelope
from events.http import Bus, Edge, Role
from order_service.domain import CataloguedProduct, Order
from order_service.handlers import place_order
from order_service.store import catalogue, orders
from product_service.domain import Product
from product_service.store import products
from shop.bootstrap import edge_of


def stock_reserved(payment_method: str = "card", total: str = "25.00") -> StockReserved:
    """The event the payment service charges on, for a fresh order, as the product service would publish it."""
    return StockReserved(
        order_id=uuid4(), customer_id="alice", total=Decimal(total), payment_method=payment_method,
        lines=(StockLevel(product_id="book", quantity=1, stock=99, revision=2),),
    )


def producer_of(event: Event) -> str:
    """The service that publishes this type (`ServiceSpec.publishes`): the only one consumers accept it from."""
    from shop.bootstrap import publishers

    return sorted(publishers()[event.type_name])[0]


def wrap(event: Event) -> Envelope:
    """The event in an envelope from its publishing service, correlated with its order when it has one."""
    return Envelope.wrap(event, producer=producer_of(event),
                         correlation_id=getattr(event, "order_id", None) or uuid4())


def session_keys() -> KeyRing:
    """The session's key pairs (tests/conftest.py makes them): every service's private and public keys."""
    return KeyRing.load(Path(os.environ["SHOP_KEYS_DIR"]))


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


def http_edge() -> Edge:
    """The HTTP edge with the session's keys, as the APIs get it from the bootstrap."""
    return edge_of(session_keys())


def token(user_id: str = "alice", role: Role = "customer") -> dict[str, str]:
    """The Authorization header of a caller, as the user service would sign it."""
    return {"Authorization": f"Bearer {http_edge().issue(user_id, role)}"}


def admin() -> dict[str, str]:
    return token("admin-1", "admin")
