"""Products (and users) for the demo, chaos run, benchmark, comparison and tests, and the wait that makes them usable.

An order can only name a product the order service's catalogue knows, and that catalogue is a projection: a product
exists for orders once its ProductCreated has reached the order service, not when the product service answered.
So seeding is "create, then wait until the order service has it" — over HTTP (through the product API, watching the
order API's /catalogue) or, where no API runs, through the product service's own command on the wiring's stores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from events.http import Bus
from order_service.store import catalogue
from product_service.domain import ProductExists
from product_service.handlers import create_product


@dataclass(frozen=True)
class NewProduct:
    id: str
    name: str
    price: str
    stock: int

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "price": self.price, "stock": self.stock}


def _wait(condition: Callable[[], object], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not there after {timeout}s (is the order service's worker running?)")
        time.sleep(0.05)


def seed_products(bus: Bus, products: Iterable[NewProduct], timeout: float = 60.0) -> None:
    """Create each product (an existing one is kept as it is) with the product service's command, then wait until
    the order service's catalogue has them all. Needs the order service's worker."""
    products = list(products)
    for product in products:
        uow = bus.unit_of_work("product_service")
        try:
            create_product(uow, product_id=product.id, name=product.name, price=Decimal(product.price),
                           stock=product.stock)
        except ProductExists:
            continue
        bus.commit(uow)

    def catalogued() -> bool:
        known = catalogue(bus.unit_of_work("order_service"))
        return all(known.get(product.id) is not None for product in products)

    _wait(catalogued, "the products in the order service's catalogue", timeout)


def seed_products_over_http(
    product_api: str, order_api: str, products: Iterable[NewProduct], admin_token: str, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """POST each product as an admin (201, or 409 when it exists), then wait until the order API's /catalogue shows
    each. Returns the product service's answers for the new ones."""
    created = []
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {admin_token}"}) as http:
        products = list(products)
        for product in products:
            response = http.post(f"{product_api}/products", json=product.body())
            if response.status_code not in (201, 409):
                raise RuntimeError(f"POST /products answered {response.status_code}: {response.text}")
            if response.status_code == 201:
                created.append(response.json())

        def catalogued(product_id: str) -> Callable[[], bool]:
            return lambda: http.get(f"{order_api}/catalogue/{product_id}").status_code == 200

        for product in products:
            _wait(catalogued(product.id), f"product {product.id} in the order service's catalogue", timeout)
    return created
