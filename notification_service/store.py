"""What this service stores: the notifications it sent, and the customers it knows (a projection of the user
service's events)."""

from __future__ import annotations

from events.collection import Collection
from events.unit_of_work import UnitOfWork
from notification_service.domain import Customer, Notification

COLLECTION, CUSTOMERS = "notification", "customer"


def notifications(uow: UnitOfWork) -> Collection[Notification]:
    return Collection(uow, COLLECTION, Notification, key=lambda notification: str(notification.id))


def customers(uow: UnitOfWork) -> Collection[Customer]:
    return Collection(uow, CUSTOMERS, Customer, key=lambda customer: customer.user_id)
