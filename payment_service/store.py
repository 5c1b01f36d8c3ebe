"""Payments as this service stores them: one document per order id."""

from __future__ import annotations

from events.collection import Collection
from events.unit_of_work import UnitOfWork
from payment_service.domain import Payment

COLLECTION = "payment"


def payments(uow: UnitOfWork) -> Collection[Payment]:
    """Keyed by order id: its existence is what makes "charge at most once" checkable."""
    return Collection(uow, COLLECTION, Payment, key=lambda payment: str(payment.order_id))
