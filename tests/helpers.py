"""Test helpers: wait on a condition with a deadline (never a fixed sleep), stop processes for good."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

from shop.supervisor import stop_process_group

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, message: str = "") -> T:
    """Return the first truthy value of `condition()`; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    stop_process_group(process, timeout)


def stock_reserved(payment_method: str = "card", total: str = "25.00"):
    """The event the payment service charges on, for a fresh order, as the product service would publish it."""
    from decimal import Decimal
    from uuid import uuid4

    from events.catalog import StockLevel, StockReserved

    return StockReserved(
        order_id=uuid4(), customer_id="alice", total=Decimal(total), payment_method=payment_method,
        lines=(StockLevel(product_id="book", quantity=1, stock=99, revision=2),),
    )


def stock_product(bus, product_id: str = "book", price: str = "25.00", stock: int = 1_000_000) -> None:
    """A product in the product service's store and in the order service's catalogue, written straight into both
    (a shortcut for tests of the bus: no ProductCreated is published, so no queue holds anything extra)."""
    from decimal import Decimal

    from order_service.domain import CataloguedProduct
    from order_service.store import Catalogue
    from product_service.domain import Product
    from product_service.store import Products

    for service, save in (
        ("product_service", lambda uow: Products(uow).save(
            Product(id=product_id, name=product_id.title(), price=Decimal(price), stock=stock))),
        ("order_service", lambda uow: Catalogue(uow).save(CataloguedProduct(
            product_id=product_id, name=product_id.title(), price=Decimal(price), price_revision=1, stock=stock,
            stock_revision=1))),
    ):
        uow = bus.unit_of_work(service)
        uow.get("product", product_id)  # both stores name the collection "product"; the commit checks its version
        save(uow)
        uow.commit()
