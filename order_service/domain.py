"""The order aggregate. Pure Python: no bus, no storage."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from events.catalog import Money, OrderItem, OrderLine, ProductId


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


MAX_REVISION_STEP = 10_000
"""How far ahead of the newest revision this projection knows a product event may be (events overtaking others)."""


class ImplausibleRevision(Exception):
    """A product event whose revision could not have been issued yet: dead-lettered, never applied."""


class CataloguedProduct(BaseModel):
    """One product in this service's projection. Price and stock each remember the product revision they come
    from: an event older than what is known changes nothing, so redelivered, reordered or replayed product events
    cannot roll a price back."""

    model_config = ConfigDict(extra="forbid")

    product_id: ProductId
    name: str
    price: Money
    price_revision: int
    stock: int
    stock_revision: int

    def reprice(self, price: Decimal, revision: int) -> bool:
        if revision <= self.price_revision:
            return False
        self._plausible(revision)
        self.price, self.price_revision = price, revision
        return True

    def restock(self, stock: int, revision: int) -> bool:
        if revision <= self.stock_revision:
            return False
        self._plausible(revision)
        self.stock, self.stock_revision = stock, revision
        return True

    def _plausible(self, revision: int) -> None:
        """A revision moves forward by one per product event, and this projection sees them all, in order but for a
        redelivery: a jump past what the product service could have issued meanwhile is refused, not believed."""
        known = max(self.price_revision, self.stock_revision)
        if revision > known + MAX_REVISION_STEP:
            raise ImplausibleRevision(f"{self.product_id}: revision {revision} after {known}")


MAX_TOTAL = Decimal("999999999999.99")
"""The largest amount Money carries (14 digits, 2 of them decimals)."""


class OrderTooLarge(Exception):
    """The total would not fit in Money."""


class IdempotencyConflict(Exception):
    """The same Idempotency-Key came with another request: the client reused a key by mistake."""


class IdempotencyRecord(BaseModel):
    """A client's Idempotency-Key of POST /orders: the order it placed, and the request that placed it."""

    model_config = ConfigDict(extra="forbid")

    key: str
    order_id: UUID
    request_hash: str


class UnknownProducts(Exception):
    """Items naming products the catalogue does not know; `problems` is one readable line per item."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def price_items(items: list[OrderItem], products: list[CataloguedProduct | None]) -> list[OrderLine]:
    """Each item at the catalogue's current price; all unknown products are reported at once."""
    unknown = [f"items.{index}.product_id: unknown product {item.product_id!r}"
               for index, (item, product) in enumerate(zip(items, products, strict=False)) if product is None]
    if unknown:
        raise UnknownProducts(unknown)
    return [OrderLine(product_id=item.product_id, quantity=item.quantity, unit_price=product.price)
            for item, product in zip(items, products, strict=False) if product is not None]


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
        """The total is the service's to compute (from lines it priced), never the client's to claim."""
        total = sum((line.unit_price * line.quantity for line in items), Decimal("0.00"))
        if total > MAX_TOTAL:
            raise OrderTooLarge(f"the total {total} is over the largest amount an order can carry ({MAX_TOTAL})")
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
