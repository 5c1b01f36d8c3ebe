"""What the order service does, as plain functions of (message, unit of work): its saga steps, and the projection
of the product catalogue it prices orders from."""

from __future__ import annotations

from events.bus import TransientError
from events.catalog import (
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderItem,
    PaymentFailed,
    PaymentProcessed,
    ProductCreated,
    ProductPriceChanged,
    StockRejected,
    StockReleased,
    StockReserved,
)
from events.unit_of_work import UnitOfWork
from order_service.domain import CataloguedProduct, IdempotencyConflict, IdempotencyRecord, Order, price_items
from order_service.store import catalogue as catalogue_of
from order_service.store import idempotency
from order_service.store import orders as orders_of


def place_order(
    uow: UnitOfWork, *, customer_id: str, items: list[OrderItem], payment_method: str,
    idempotency_key: str | None = None, request_hash: str = "",
) -> Order:
    """The command behind `POST /orders`: priced from this service's catalogue (raises `UnknownProducts`), then the
    order and its OrderCreated are stored in one step. Stock is not checked here: the product service decides.

    With an Idempotency-Key, the key is stored with the order in the same step: the same key and request again
    return the order placed the first time (nothing new is placed), the same key with another request raises
    `IdempotencyConflict`."""
    if idempotency_key is not None:
        record = idempotency(uow).get(f"{customer_id}:{idempotency_key}")
        if record is not None:
            if record.request_hash != request_hash:
                raise IdempotencyConflict("this Idempotency-Key was used for another request")
            placed = orders_of(uow).get(record.order_id)
            assert placed is not None, "an idempotency record is stored with its order"
            return placed
    catalogue = catalogue_of(uow)
    lines = price_items(items, [catalogue.get(item.product_id) for item in items])
    order = Order.place(customer_id, lines, payment_method)
    orders_of(uow).save(order)
    if idempotency_key is not None:
        idempotency(uow).save(IdempotencyRecord(key=f"{customer_id}:{idempotency_key}", order_id=order.id,
                                                request_hash=request_hash))
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
    orders = orders_of(uow)
    order = orders.get(event.order_id)
    if order is None or not order.confirm():
        return
    orders.save(order)
    uow.publish(OrderConfirmed(order_id=order.id, customer_id=order.customer_id, total=order.total))


def cancel_order(event: PaymentFailed | StockRejected, uow: UnitOfWork) -> None:
    """Either refusal ends the order with its reason; the stock of a failed payment is released by the product
    service, which reacts to the same PaymentFailed."""
    orders = orders_of(uow)
    order = orders.get(event.order_id)
    if order is None or not order.cancel(event.reason):
        return
    orders.save(order)
    uow.publish(
        OrderCancelled(order_id=order.id, customer_id=order.customer_id, total=order.total, reason=event.reason)
    )


def record_notification(event: NotificationSent, uow: UnitOfWork) -> None:
    """Closes the journey: the order shows when its customer was told."""
    orders = orders_of(uow)
    order = orders.get(event.order_id)
    if order is None or uow.cause is None or not order.mark_notified(uow.cause.occurred_at):
        return
    orders.save(order)


# -- the catalogue projection ---------------------------------------------------------------------------------------
def catalogue_new_product(event: ProductCreated, uow: UnitOfWork) -> None:
    catalogue = catalogue_of(uow)
    if catalogue.get(event.product_id) is not None:
        return  # a later event already told us more (or this is a replay)
    catalogue.save(CataloguedProduct(
        product_id=event.product_id, name=event.name, price=event.price, price_revision=event.revision,
        stock=event.stock, stock_revision=event.revision,
    ))


def catalogue_new_price(event: ProductPriceChanged, uow: UnitOfWork) -> None:
    catalogue = catalogue_of(uow)
    product = catalogue.get(event.product_id)
    if product is None:
        # Overtook its ProductCreated (a redelivery reorders): retried until the product is known, never dropped.
        raise TransientError(f"price of {event.product_id} before the product itself")
    if product.reprice(event.price, event.revision):
        catalogue.save(product)


def catalogue_stock_levels(event: StockReserved | StockReleased, uow: UnitOfWork) -> None:
    """Availability for display and quick checks; the product service's reservation is what decides."""
    catalogue = catalogue_of(uow)
    for line in event.lines:
        product = catalogue.get(line.product_id)
        if product is not None and product.restock(line.stock, line.revision):
            catalogue.save(product)
