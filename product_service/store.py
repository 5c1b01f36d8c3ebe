"""Products and reservations as this service stores them."""

from __future__ import annotations

from uuid import UUID

from events.unit_of_work import UnitOfWork
from product_service.domain import Product, Reservation

PRODUCTS, RESERVATIONS = "product", "reservation"


class Products:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def get(self, product_id: str) -> Product | None:
        document = self._uow.get(PRODUCTS, product_id)
        return None if document is None else Product.model_validate(document)

    def save(self, product: Product) -> None:
        self._uow.put(PRODUCTS, product.id, product.model_dump(mode="json"))


class Reservations:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def for_order(self, order_id: UUID) -> Reservation | None:
        document = self._uow.get(RESERVATIONS, str(order_id))
        return None if document is None else Reservation.model_validate(document)

    def save(self, reservation: Reservation) -> None:
        self._uow.put(RESERVATIONS, str(reservation.order_id), reservation.model_dump(mode="json"))
