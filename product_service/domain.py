"""Products and reservations. Pure Python: no bus, no storage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from events.catalog import Money, OrderItem, OrderLine, ProductId, Stock, StockLevel

PRICES_KEPT = 10


class Product(BaseModel):
    """`revision` counts every change; each product event carries it, so a projection elsewhere keeps the newest
    state whatever order (or how many times) the events reach it."""

    model_config = ConfigDict(extra="forbid")

    id: ProductId
    name: str = Field(min_length=1, max_length=200)
    price: Money
    stock: Stock
    revision: int = 1
    past_prices: list[Money] = Field(default_factory=list, description=f"the last {PRICES_KEPT} prices before this one")

    def change_price(self, price: Decimal) -> bool:
        if price == self.price:
            return False
        self.past_prices = [*self.past_prices, self.price][-PRICES_KEPT:]
        self.price, self.revision = price, self.revision + 1
        return True

    def sold_at(self, price: Decimal) -> bool:
        """An order may carry the current price, or one the order service's catalogue still had (it lags behind by
        the events in its queue); any other price is not the product service's."""
        return price == self.price or price in self.past_prices

    def take(self, quantity: int) -> StockLevel:
        self.stock, self.revision = self.stock - quantity, self.revision + 1
        return StockLevel(product_id=self.id, quantity=quantity, stock=self.stock, revision=self.revision)

    def put_back(self, quantity: int) -> StockLevel:
        self.stock, self.revision = self.stock + quantity, self.revision + 1
        return StockLevel(product_id=self.id, quantity=quantity, stock=self.stock, revision=self.revision)


class ReservationStatus(StrEnum):
    RESERVED = "RESERVED"
    REJECTED = "REJECTED"
    RELEASED = "RELEASED"


class Reservation(BaseModel):
    """One per order, stored under the order id: its existence is what makes "reserve at most once" checkable."""

    model_config = ConfigDict(extra="forbid")

    order_id: UUID
    status: ReservationStatus
    quantities: dict[str, int]
    reason: str | None = None
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def wanted(items: Iterable[OrderItem]) -> dict[str, int]:
    """Quantities per product (an order may name a product on two lines)."""
    totals: Counter[str] = Counter()
    for item in items:
        totals[item.product_id] += item.quantity
    return dict(totals)


def mispriced(lines: Iterable[OrderLine], total: Decimal, products: Mapping[str, Product | None]) -> str | None:
    """Why an order's prices are not this service's, or None: every line at a price the product had, and the total
    their sum. The order service priced it; the product service checks before reserving, rather than take it on
    trust."""
    lines = list(lines)
    problems = [f"{line.product_id} at {line.unit_price}" for line in lines
                if (product := products.get(line.product_id)) is not None and not product.sold_at(line.unit_price)]
    if sum((line.unit_price * line.quantity for line in lines), Decimal("0.00")) != total:
        problems.append(f"a total of {total} for these lines")
    return f"prices not the catalogue's: {', '.join(problems)}" if problems else None


def shortage(quantities: Mapping[str, int], products: Mapping[str, Product | None]) -> str | None:
    """Why these quantities cannot all be reserved, or None. All or nothing: a partial reservation would leave
    stock held for an order that cannot be fulfilled."""
    problems = []
    for product_id, quantity in quantities.items():
        product = products.get(product_id)
        if product is None:
            problems.append(f"unknown product {product_id}")
        elif product.stock < quantity:
            problems.append(f"{product.name} ({quantity} wanted, {product.stock} left)")
    return f"out of stock: {', '.join(problems)}" if problems else None


class ProductExists(Exception):
    pass


class UnknownProduct(Exception):
    pass
