"""A notification to a customer, and the customers this service knows (a projection of UserRegistered).

A notification's id is derived from the order and the outcome, so every redelivery of the same outcome describes
the same notification, and the log can refuse a second copy."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from pydantic import BaseModel, ConfigDict, Field

from events.catalog import OrderCancelled, OrderConfirmed


class Customer(BaseModel):
    """A user as this service heard of it: enough to address them, nothing more."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    name: str
    email: str

    @property
    def address(self) -> str:
        return f"{self.name} <{self.email}>"


class Notification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UUID
    event_id: UUID
    order_id: UUID
    customer_id: str
    to: str = Field(description="'Name <email>' for a known customer, else the customer id")
    type: str
    message: str
    sent_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def about(cls, event: OrderConfirmed | OrderCancelled, event_id: UUID, customer: Customer | None) -> Notification:
        """Addressed by name when the customer is known; an unknown one (registered elsewhere, or the
        UserRegistered not yet arrived) is still told, addressed by id."""
        short = str(event.order_id)[:8]
        greeting = customer.name if customer else event.customer_id
        if isinstance(event, OrderConfirmed):
            message = f"Hello {greeting}, your order {short} is confirmed: {event.total} charged. Thank you!"
        else:
            message = f"Hello {greeting}, your order {short} was cancelled: {event.reason}. Nothing was charged."
        return cls(
            id=uuid5(NAMESPACE_URL, f"shop:notification:{event.order_id}:{event.type_name}"),
            event_id=event_id,
            order_id=event.order_id,
            customer_id=event.customer_id,
            to=customer.address if customer else event.customer_id,
            type=event.type_name,
            message=message,
        )
