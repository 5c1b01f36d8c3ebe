"""Payments as this service stores them: one document per order id."""

from __future__ import annotations

from uuid import UUID

from events.unit_of_work import UnitOfWork
from payment_service.domain import Payment

COLLECTION = "payment"


class Payments:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def for_order(self, order_id: UUID) -> Payment | None:
        document = self._uow.get(COLLECTION, str(order_id))
        return None if document is None else Payment.model_validate(document)

    def add(self, payment: Payment) -> None:
        self._uow.put(COLLECTION, str(payment.order_id), payment.model_dump(mode="json"))
