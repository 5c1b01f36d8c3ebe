"""The order service as the bus sees it: what it reacts to."""

from events.bus import ServiceSpec
from events.catalog import NotificationSent, PaymentFailed, PaymentProcessed
from order_service import handlers

SERVICE = ServiceSpec(
    name="order_service",
    handlers={
        PaymentProcessed: handlers.confirm_order,
        PaymentFailed: handlers.cancel_order,
        NotificationSent: handlers.record_notification,
    },
)
