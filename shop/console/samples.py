"""Sample orders with a chosen outcome, placed through the order API as the signed-in admin (who may order for any
customer), for sample customers registered through the user API: the console drives the shop as a client would.

How each outcome happens (the simulated gateway and the product service decide; see payment_service/gateway.py):
paid `card`; declined `card_declined`; flaky `card_flaky` (times out, is retried, then charged); out of stock: a product
stocked with 0; poison `card_crash`, which kills the payment worker on every delivery until the runtime dead-letters
it as a poison message (only where SHOP_FAULT_INJECTION is on, as in `shop chaos`).
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

from shop.client import place_order, register
from shop.seeding import NewProduct, seed_products_over_http

IN_STOCK = NewProduct("console-tea", "Tea (console sample)", "4.50", 1_000_000)
SOLD_OUT = NewProduct("console-unicorn", "Unicorn (console sample, never in stock)", "99.00", 0)
OUTCOMES: dict[str, tuple[NewProduct, str]] = {
    "paid": (IN_STOCK, "card"),
    "declined": (IN_STOCK, "card_declined"),
    "out_of_stock": (SOLD_OUT, "card"),
    "flaky": (IN_STOCK, "card_flaky"),
    "poison": (IN_STOCK, "card_crash"),
}
CUSTOMERS = ("Ada Lovelace", "Grace Hopper", "Alan Turing")


class NeedsFaultInjection(Exception):
    """A poison order needs SHOP_FAULT_INJECTION: without it `card_crash` is an ordinary card."""


class SampleOrders:
    """Products and customers are made once per console (the first order placed), then reused."""

    def __init__(self, order_url: str, product_url: str, user_url: str, fault_injection: bool) -> None:
        self.order_url, self.product_url, self.user_url = order_url, product_url, user_url
        self.fault_injection = fault_injection
        self.customers: list[str] = []
        self._lock = threading.Lock()

    def _prepare(self, admin_token: str) -> list[str]:
        with self._lock:
            if not self.customers:
                seed_products_over_http(self.product_url, self.order_url, [IN_STOCK, SOLD_OUT], admin_token)
                run = secrets.token_hex(3)  # fresh addresses per console: registration never reveals an existing id
                for name in CUSTOMERS:
                    email = f"{name.split()[0].lower()}+console-{run}@example.com"
                    self.customers.append(str(register(self.user_url, name, email, secrets.token_urlsafe(16))["id"]))
            return self.customers

    def place(self, admin_token: str, outcome: str, count: int) -> list[dict[str, Any]]:
        """Place `count` orders that end as `outcome` (KeyError for an unknown one); returns the order API's answers."""
        product, method = OUTCOMES[outcome]
        if outcome == "poison" and not self.fault_injection:
            raise NeedsFaultInjection("a poison order needs SHOP_FAULT_INJECTION=1 (test and demo machines only)")
        customers = self._prepare(admin_token)
        return [place_order(self.order_url, admin_token, [(product.id, 1)], method, customers[n % len(customers)])
                for n in range(count)]
