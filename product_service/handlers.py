"""What the product service does: two commands from its HTTP edge, and its two steps of the order saga."""

from __future__ import annotations

from decimal import Decimal
from uuid import NAMESPACE_URL, UUID, uuid5

from events.catalog import (
    OrderCreated,
    PaymentFailed,
    ProductCreated,
    ProductPriceChanged,
    StockRejected,
    StockReleased,
    StockReserved,
)
from events.unit_of_work import UnitOfWork
from product_service.domain import (
    Product,
    ProductExists,
    Reservation,
    ReservationStatus,
    UnknownProduct,
    mispriced,
    shortage,
    wanted,
)
from product_service.store import products as product_collection
from product_service.store import reservations as reservation_collection


def product_journey(product_id: str) -> UUID:
    """Every event about one product shares a correlation id derived from its id, so its history can be followed."""
    return uuid5(NAMESPACE_URL, f"shop:product:{product_id}")


def create_product(uow: UnitOfWork, *, product_id: str, name: str, price: Decimal, stock: int) -> Product:
    """The command behind `POST /products`: the product and its ProductCreated in one step."""
    products = product_collection(uow)
    if products.get(product_id) is not None:
        raise ProductExists(f"product {product_id} exists")
    product = Product(id=product_id, name=name, price=price, stock=stock)
    products.save(product)
    uow.publish(
        ProductCreated(product_id=product.id, name=product.name, price=product.price, stock=product.stock,
                       revision=product.revision),
        correlation_id=product_journey(product.id),
    )
    return product


def change_price(uow: UnitOfWork, *, product_id: str, price: Decimal) -> Product:
    """The command behind `PATCH /products/{id}`. Orders already placed keep the price they were placed at."""
    products = product_collection(uow)
    product = products.get(product_id)
    if product is None:
        raise UnknownProduct(f"no product {product_id}")
    previous = product.price
    if product.change_price(price):
        products.save(product)
        uow.publish(
            ProductPriceChanged(product_id=product.id, price=product.price, previous_price=previous,
                                revision=product.revision),
            correlation_id=product_journey(product.id),
        )
    return product


def reserve_stock(event: OrderCreated, uow: UnitOfWork) -> None:
    """All of the order's items, or none. The reservation is stored under the order id, so a replayed OrderCreated
    finds it and reserves nothing twice (the inbox already drops a redelivery of the same message; this also covers
    the same order arriving in a second message)."""
    reservations, products = reservation_collection(uow), product_collection(uow)
    if reservations.get(event.order_id) is not None:
        return
    quantities = wanted(event.items)
    stocked = {product_id: products.get(product_id) for product_id in quantities}
    reason = shortage(quantities, stocked) or mispriced(event.items, event.total, stocked)
    if reason is not None:
        reservations.save(Reservation(order_id=event.order_id, status=ReservationStatus.REJECTED,
                                      quantities=quantities, reason=reason))
        uow.publish(StockRejected(order_id=event.order_id, reason=reason))
        return
    levels = []
    for product_id, quantity in quantities.items():
        product = stocked[product_id]
        assert product is not None  # shortage() returned None: every product was found
        levels.append(product.take(quantity))
        products.save(product)
    reservations.save(Reservation(order_id=event.order_id, status=ReservationStatus.RESERVED, quantities=quantities))
    uow.publish(
        StockReserved(order_id=event.order_id, customer_id=event.customer_id, total=event.total,
                      payment_method=event.payment_method, lines=tuple(levels))
    )


def release_stock(event: PaymentFailed, uow: UnitOfWork) -> None:
    """The compensation: the payment failed, so what was reserved for the order goes back on the shelf, once (the
    reservation's status says whether it already went back). The payment service decides once per order, so a
    PaymentFailed is never followed or preceded by a PaymentProcessed for the same order."""
    reservations, products = reservation_collection(uow), product_collection(uow)
    reservation = reservations.get(event.order_id)
    if reservation is None or reservation.status is not ReservationStatus.RESERVED:
        return
    levels = []
    for product_id, quantity in reservation.quantities.items():
        product = products.get(product_id)
        if product is None:
            continue  # products are never deleted; kept safe rather than crash on a hand-edited store
        levels.append(product.put_back(quantity))
        products.save(product)
    reservation.status = ReservationStatus.RELEASED
    reservations.save(reservation)
    uow.publish(StockReleased(order_id=event.order_id, lines=tuple(levels)))
