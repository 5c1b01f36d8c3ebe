"""Products and reservations as this service stores them."""

from __future__ import annotations

from events.collection import Collection
from events.unit_of_work import UnitOfWork
from product_service.domain import Product, Reservation

PRODUCTS, RESERVATIONS = "product", "reservation"


def products(uow: UnitOfWork) -> Collection[Product]:
    return Collection(uow, PRODUCTS, Product, key=lambda product: product.id)


def reservations(uow: UnitOfWork) -> Collection[Reservation]:
    """Keyed by order id: one reservation per order."""
    return Collection(uow, RESERVATIONS, Reservation, key=lambda reservation: str(reservation.order_id))
