"""What the order service does, as plain functions of (message, unit of work)."""

from __future__ import annotations

from events.catalog import (
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderLine,
    PaymentFailed,
    PaymentProcessed,
)
from events.unit_of_work import UnitOfWork
from order_service.domain import Order
from order_service.store import Orders


def place_order(
    uow: UnitOfWork, *, customer_id: str, items: list[OrderLine], payment_method: str
) -> Order:
    """The command behind `POST /orders`: the order and its OrderCreated are stored in one step."""
    order = Order.place(customer_id, items, payment_method)
    Orders(uow).save(order)
    uow.publish(
        OrderCreated(
            order_id=order.id,
            customer_id=order.customer_id,
            items=order.items,
            total=order.total,
            payment_method=order.payment_method,
        ),
        correlation_id=order.id,
    )
    return order


def confirm_order(event: PaymentProcessed, uow: UnitOfWork) -> None:
    orders = Orders(uow)
    order = orders.get(event.order_id)
    if order is None or not order.confirm():
        return
    orders.save(order)
    uow.publish(OrderConfirmed(order_id=order.id, customer_id=order.customer_id, total=order.total))


def cancel_order(event: PaymentFailed, uow: UnitOfWork) -> None:
    orders = Orders(uow)
    order = orders.get(event.order_id)
    if order is None or not order.cancel(event.reason):
        return
    orders.save(order)
    uow.publish(
        OrderCancelled(order_id=order.id, customer_id=order.customer_id, total=order.total, reason=event.reason)
    )


def record_notification(event: NotificationSent, uow: UnitOfWork) -> None:
    """Closes the journey: the order shows when its customer was told."""
    orders = Orders(uow)
    order = orders.get(event.order_id)
    if order is None or uow.cause is None or not order.mark_notified(uow.cause.occurred_at):
        return
    orders.save(order)
