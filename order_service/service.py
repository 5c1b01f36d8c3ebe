"""The order service as the bus sees it: what it reacts to, and which of that is its product catalogue projection."""

from events.bus import Projection, ServiceSpec
from events.catalog import (
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    PaymentFailed,
    PaymentProcessed,
    ProductCreated,
    ProductPriceChanged,
    StockRejected,
    StockReleased,
    StockReserved,
)
from order_service import handlers
from order_service.store import CATALOGUE

PRODUCT_CATALOGUE = Projection(
    collection=CATALOGUE,
    handlers={
        ProductCreated: handlers.catalogue_new_product,
        ProductPriceChanged: handlers.catalogue_new_price,
        StockReserved: handlers.catalogue_stock_levels,
        StockReleased: handlers.catalogue_stock_levels,
    },
)

SERVICE = ServiceSpec(
    name="order_service",
    handlers={
        StockRejected: handlers.cancel_order,
        PaymentProcessed: handlers.confirm_order,
        PaymentFailed: handlers.cancel_order,
        NotificationSent: handlers.record_notification,
        **PRODUCT_CATALOGUE.handlers,
    },
    projections=(PRODUCT_CATALOGUE,),
    publishes=(OrderCreated, OrderConfirmed, OrderCancelled),  # OrderCreated from POST /orders
)
