"""The order aggregate. Pure Python: no bus, no storage."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from events.catalog import Money, OrderLine


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UUID = Field(default_factory=uuid4)
    customer_id: str
    items: tuple[OrderLine, ...]
    payment_method: str
    total: Money
    status: OrderStatus = OrderStatus.PENDING
    reason: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    settled_at: datetime | None = None
    notified_at: datetime | None = None

    @classmethod
    def place(cls, customer_id: str, items: list[OrderLine], payment_method: str) -> Order:
        """The total is the service's to compute, never the client's to claim."""
        total = sum((line.unit_price * line.quantity for line in items), Decimal("0.00"))
        return cls(customer_id=customer_id, items=tuple(items), payment_method=payment_method, total=total)

    def confirm(self) -> bool:
        """PENDING -> CONFIRMED. False (and no change) for any other status: a late or repeated payment event
        never moves an order backwards or sideways."""
        if self.status is not OrderStatus.PENDING:
            return False
        self.status, self.settled_at = OrderStatus.CONFIRMED, datetime.now(UTC)
        return True

    def cancel(self, reason: str) -> bool:
        if self.status is not OrderStatus.PENDING:
            return False
        self.status, self.reason, self.settled_at = OrderStatus.CANCELLED, reason, datetime.now(UTC)
        return True

    def mark_notified(self, at: datetime) -> bool:
        if self.notified_at is not None:
            return False
        self.notified_at = at
        return True
