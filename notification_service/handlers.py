"""What the notification service does."""

from __future__ import annotations

from events.catalog import (
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    UserRegistered,
)
from events.unit_of_work import UnitOfWork
from notification_service.domain import Customer, Notification
from notification_service.notification_log import NotificationLog
from notification_service.store import customers, notifications


def notify_customer(event: OrderConfirmed | OrderCancelled, uow: UnitOfWork, notification_log: NotificationLog) -> None:
    assert uow.cause is not None, "notifications are always caused by an event"
    notification = Notification.about(event, uow.cause.event_id, customers(uow).get(event.customer_id))
    sent = notifications(uow)
    if sent.get(notification.id) is not None:
        return
    line = notification.model_dump(mode="json", exclude={"id"})
    notification_log.send(str(notification.id), {"notification_id": str(notification.id), **line})
    sent.save(notification)
    uow.publish(
        NotificationSent(
            notification_id=notification.id,
            order_id=notification.order_id,
            customer_id=notification.customer_id,
            about=notification.type,
        )
    )


def remember_customer(event: UserRegistered, uow: UnitOfWork) -> None:
    """The customer projection: who a customer id is, so notifications can be addressed to a person."""
    known = customers(uow)
    if known.get(event.user_id) is None:
        known.save(Customer(user_id=event.user_id, name=event.name, email=event.email))
