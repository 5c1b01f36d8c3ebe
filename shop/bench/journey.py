"""What one benchmark order is and which queues its events pass through, read from the services themselves.

The shop grows (a product service that reserves stock before payment, a catalogue the order service prices
from), and the benchmark must measure the system as it is, not as it was when the benchmark was written. So the
consuming services, the journey and the order's items are derived here, in one place, for all three pipelines:

* consumers: every service with handlers (`shop.services.CONSUMERS` when it exists), one worker each;
* journey: whoever consumes OrderCreated (the product service), then payment -> order -> notification -> order,
  which the bare pipeline mirrors hop for hop, with the same side deliveries (`side_deliveries`);
* items: priced by the order service from its catalogue when it has one, so the benchmark first creates one product
  through the product service's own command, with stock enough for any run.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

BENCH_PRODUCT = "bench-book"
BENCH_PRICE = Decimal("12.50")
BENCH_STOCK = 1_000_000_000
NOTIFIER = "notification_service"
"""the service whose hop is the moment an order is notified: where "placed -> notified" latency ends"""
TAIL = ("payment_service", "order_service", NOTIFIER, "order_service")


def consumers() -> dict[str, Any]:
    from shop.services import CONSUMERS

    return dict(CONSUMERS)


def journey() -> tuple[str, ...]:
    """The queues an order's main line of events visits, first to last (projections fed on the side, such as the
    order service's catalogue, are not hops of their own)."""
    from events.catalog import OrderCreated

    first = tuple(name for name, spec in consumers().items() if OrderCreated in spec.handlers and name not in TAIL)
    return first + TAIL


def side_deliveries() -> dict[str, tuple[str, ...]]:
    """{service: other queues that get a copy of the event it sends down the main line}: the product service's
    StockReserved also feeds the order service's catalogue, one more delivery per order that the bare pipeline
    must pay too."""
    from events.catalog import StockReserved

    return {
        "product_service": tuple(
            name for name, spec in consumers().items() if StockReserved in spec.handlers and name != "payment_service"
        )
    }


def needs_product() -> bool:
    return "product_service" in consumers()


def order_items() -> list[Any]:
    """Two copies of one book (the order service prices them from its catalogue)."""
    from events.catalog import OrderItem

    return [OrderItem(product_id=BENCH_PRODUCT, quantity=2)]


def create_product(unit_of_work: Callable[[str], Any], commit: Callable[[Any], None]) -> None:
    """The product every benchmark order buys, created with the product service's own command (on a fresh
    database: an existing one is kept)."""
    from product_service import handlers
    from product_service.domain import ProductExists

    uow = unit_of_work("product_service")
    try:
        handlers.create_product(uow, product_id=BENCH_PRODUCT, name="Benchmark book", price=BENCH_PRICE,
                                stock=BENCH_STOCK)
    except ProductExists:
        return
    commit(uow)
