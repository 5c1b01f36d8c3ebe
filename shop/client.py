"""The shop as a client sees it over HTTP: wait for an API, place an order, read stock. Used by the demo, `shop order
place` and the tests, so every one of them talks to the APIs the way a user would."""

from __future__ import annotations

import time
from typing import Any

import httpx


def wait_for_api(base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API at {base_url} did not answer within {timeout}s")


def place_order(base_url: str, customer: str, lines: list[tuple[str, int]], method: str) -> dict[str, Any]:
    body = {
        "customer_id": customer,
        "items": [{"product_id": product, "quantity": quantity} for product, quantity in lines],
        "payment_method": method,
    }
    response = httpx.post(f"{base_url}/orders", json=body, timeout=10)
    if response.status_code != 202:
        raise RuntimeError(f"POST /orders answered {response.status_code}: {response.text}")
    return dict(response.json())


def stock(product_url: str, product_id: str) -> int:
    return int(httpx.get(f"{product_url}/products/{product_id}", timeout=10).json()["stock"])
