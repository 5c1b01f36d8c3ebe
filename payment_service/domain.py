"""The payment record. One per order: its existence is what makes "charge at most once" checkable."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from events.catalog import Money


class PaymentStatus(StrEnum):
    CHARGED = "CHARGED"
    DECLINED = "DECLINED"


class Payment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UUID = Field(default_factory=uuid4)
    order_id: UUID
    amount: Money
    status: PaymentStatus
    reason: str | None = None
    gateway_reference: str | None = None
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
