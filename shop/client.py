"""The shop as a client sees it over HTTP: wait for an API, register, sign in, place an order, read stock. Used by the
demo, `shop order place`, `shop compare` and the tests, so every one of them talks to the APIs the way a user would."""

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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(user_url: str, name: str, email: str, password: str) -> dict[str, Any]:
    """POST /users (201); an address already registered is fine (409): the caller signs in next."""
    response = httpx.post(f"{user_url}/users", json={"name": name, "email": email, "password": password}, timeout=10)
    if response.status_code not in (201, 409):
        raise RuntimeError(f"POST /users answered {response.status_code}: {response.text}")
    return dict(response.json())


def sign_in(user_url: str, email: str, password: str) -> tuple[str, str]:
    """(access token, user id) from POST /token, the OAuth2 password flow."""
    response = httpx.post(f"{user_url}/token", data={"username": email, "password": password}, timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"POST /token answered {response.status_code}: {response.text}")
    token = str(response.json()["access_token"])
    return token, subject_of(token)


def subject_of(token: str) -> str:
    """The user id a token speaks for (read, not verified: the API verifies)."""
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


def place_order(base_url: str, token: str, lines: list[tuple[str, int]], method: str,
                customer: str | None = None) -> dict[str, Any]:
    """POST /orders for the token's own user (or `customer`, for an admin)."""
    body = {
        "customer_id": customer or subject_of(token),
        "items": [{"product_id": product, "quantity": quantity} for product, quantity in lines],
        "payment_method": method,
    }
    response = httpx.post(f"{base_url}/orders", json=body, headers=bearer(token), timeout=10)
    if response.status_code not in (201, 202):
        raise RuntimeError(f"POST /orders answered {response.status_code}: {response.text}")
    return dict(response.json())


def stock(product_url: str, product_id: str) -> int:
    return int(httpx.get(f"{product_url}/products/{product_id}", timeout=10).json()["stock"])
