"""The product service as the bus sees it: its two saga steps, and what it publishes."""

from events.bus import ServiceSpec
from events.catalog import (
    OrderCreated,
    PaymentFailed,
    ProductCreated,
    ProductPriceChanged,
    StockRejected,
    StockReleased,
    StockReserved,
)
from product_service import handlers

SERVICE = ServiceSpec(
    name="product_service",
    handlers={OrderCreated: handlers.reserve_stock, PaymentFailed: handlers.release_stock},
    # the last two from its API
    publishes=(StockReserved, StockRejected, StockReleased, ProductCreated, ProductPriceChanged),
)
