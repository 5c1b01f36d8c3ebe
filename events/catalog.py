"""Every event the services exchange: one pydantic model per (type, version), and the registry that maps them.

The model *is* the contract: a consumer validates the payload against it before any handler runs, unknown fields
are rejected, and money travels as a decimal string so no float ever rounds a price.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

MONEY_PATTERN = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$"
"""A plain decimal string: ASCII digits, no sign, no exponent, no separators or padding, at most two decimals."""


def _money(value: Any) -> Any:
    """On the wire money is a plain decimal string; in Python code a Decimal may be given directly."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str) and re.fullmatch(MONEY_PATTERN, value):
        return Decimal(value)
    raise ValueError("money must be a decimal string such as '19.99' (ASCII digits, at most two decimals)")


Money = Annotated[
    Decimal,
    BeforeValidator(_money),
    Field(ge=0, max_digits=14, decimal_places=2),
    PlainSerializer(lambda amount: f"{amount:.2f}", return_type=str),
    # Stated, not inherited: the schema must not change with a pydantic release (it did between 2.13 and 2.14).
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["19.99"]}),
]


class Event(BaseModel):
    """Base of every payload. Subclasses set `type_name` and `version`, the two halves of the routing key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type_name: ClassVar[str]
    version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.type_name = cls.__name__


ProductId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
Stock = Annotated[int, Field(ge=0, le=1_000_000_000)]
Revision = Annotated[int, Field(ge=1, description="the product's change counter: a projection keeps the newest")]


class OrderItem(BaseModel):
    """What a customer asks for. The price is not theirs to say: the order service prices it from its projection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: ProductId
    quantity: int = Field(gt=0, le=10_000)


class OrderLine(OrderItem):
    """An item as priced by the order service when the order was placed."""

    unit_price: Money


class OrderCreated(Event):
    order_id: UUID
    customer_id: str
    items: tuple[OrderLine, ...]
    total: Money
    payment_method: str


class PaymentProcessed(Event):
    order_id: UUID
    payment_id: UUID
    amount: Money


class PaymentFailed(Event):
    order_id: UUID
    amount: Money
    reason: str


class OrderConfirmed(Event):
    order_id: UUID
    customer_id: str
    total: Money


class OrderCancelled(Event):
    order_id: UUID
    customer_id: str
    total: Money
    reason: str


class UserRegistered(Event):
    user_id: str
    name: str
    email: str


class ProductCreated(Event):
    product_id: ProductId
    name: str
    price: Money
    stock: Stock
    revision: Revision


class ProductPriceChanged(Event):
    product_id: ProductId
    price: Money
    previous_price: Money
    revision: Revision


class StockLevel(BaseModel):
    """One product's part in a reservation or release: how many, and the stock left after it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: ProductId
    quantity: int = Field(gt=0)
    stock: Stock
    revision: Revision


class StockReserved(Event):
    """The order's stock is set aside. It carries the order's terms forward (customer, total, payment method) so the
    next step, payment, needs nothing but this event (see `payment_service.handlers.charge_payment`)."""

    order_id: UUID
    customer_id: str
    total: Money
    payment_method: str
    lines: tuple[StockLevel, ...]


class StockRejected(Event):
    order_id: UUID
    reason: str


class StockReleased(Event):
    """The compensation of StockReserved, after the payment failed."""

    order_id: UUID
    lines: tuple[StockLevel, ...]


class NotificationSent(Event):
    notification_id: UUID
    order_id: UUID
    customer_id: str
    about: str = Field(description="the event type the customer was told about")


EVENT_TYPES: dict[tuple[str, int], type[Event]] = {
    (model.type_name, model.version): model
    for model in (
        OrderCreated, PaymentProcessed, PaymentFailed, OrderConfirmed, OrderCancelled, NotificationSent,
        UserRegistered, ProductCreated, ProductPriceChanged, StockReserved, StockRejected, StockReleased,
    )
}


def event_model(type_name: str, version: int) -> type[Event] | None:
    return EVENT_TYPES.get((type_name, version))
