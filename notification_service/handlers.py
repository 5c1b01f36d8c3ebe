"""What the notification service does."""

from __future__ import annotations

from events.catalog import NotificationSent, OrderCancelled, OrderConfirmed
from events.unit_of_work import UnitOfWork
from notification_service.domain import Notification
from notification_service.notification_log import NotificationLog

COLLECTION = "notification"


def notify_customer(event: OrderConfirmed | OrderCancelled, uow: UnitOfWork, notifications: NotificationLog) -> None:
    assert uow.cause is not None, "notifications are always caused by an event"
    notification = Notification.about(event, uow.cause.event_id)
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
