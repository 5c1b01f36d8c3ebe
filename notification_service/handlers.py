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

COLLECTION = "notification"
CUSTOMERS = "customer"


def notify_customer(event: OrderConfirmed | OrderCancelled, uow: UnitOfWork, notifications: NotificationLog) -> None:
    assert uow.cause is not None, "notifications are always caused by an event"
    customer = uow.get(CUSTOMERS, event.customer_id)
    notification = Notification.about(event, uow.cause.event_id, customer and Customer.model_validate(customer))
    if uow.get(COLLECTION, str(notification.id)) is not None:
        return
    line = notification.model_dump(mode="json", exclude={"id"})
    notifications.send(str(notification.id), {"notification_id": str(notification.id), **line})
    uow.put(COLLECTION, str(notification.id), notification.model_dump(mode="json"))
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
    if uow.get(CUSTOMERS, event.user_id) is None:
        uow.put(CUSTOMERS, event.user_id, Customer(user_id=event.user_id, name=event.name, email=event.email)
                .model_dump(mode="json"))
