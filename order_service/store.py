"""What this service stores: its orders, and its own copy of the product catalogue (a projection of the product
service's events). Documents in its unit of work, nobody else's business."""

from __future__ import annotations

from events.collection import Collection
from events.unit_of_work import UnitOfWork
from order_service.domain import CataloguedProduct, IdempotencyRecord, Order

COLLECTION = "order"
CATALOGUE = "product"
IDEMPOTENCY = "idempotency"


def orders(uow: UnitOfWork) -> Collection[Order]:
    return Collection(uow, COLLECTION, Order, key=lambda order: str(order.id))


def catalogue(uow: UnitOfWork) -> Collection[CataloguedProduct]:
    """The products as this service last heard of them. Prices come from here, so placing an order needs no call to
    the product service (which may be down); it may lag behind by the events still in this service's queue."""
    return Collection(uow, CATALOGUE, CataloguedProduct, key=lambda product: product.product_id)


def idempotency(uow: UnitOfWork) -> Collection[IdempotencyRecord]:
    """Keyed by '<customer id>:<Idempotency-Key>': a key belongs to the customer who sent it."""
    return Collection(uow, IDEMPOTENCY, IdempotencyRecord, key=lambda record: record.key)
