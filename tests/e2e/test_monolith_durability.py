"""The monolith keeps its data: killed with SIGKILL while orders flow and started again, it finishes every order it
accepted, exactly once (one final state, one notification, at most one charge), and still answers for the earlier
ones. Run for both dispatch modes against a real `shop monolith` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from notification_service.notification_log import read_notifications
from payment_service.gateway import SqliteLedger
from shop.client import bearer, sign_in
from shop.embedded_redis import free_port
from shop.seeding import NewProduct, seed_products_over_http
from tests.support.waiting import stop_process, wait_until

ORDERS = 120
KILL_AFTER = 40
METHODS = ("card", "card", "card_declined", "card_flaky")


class Monolith:
    def __init__(self, directory: Path, dispatch: str) -> None:
        self.directory, self.port = directory, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ, "SHOP_ORDER_API_PORT": str(self.port), "SHOP_VAR_DIR": str(directory / "var"),
            "SHOP_NOTIFICATION_LOG": str(directory / "notifications.log"), "SHOP_MONOLITH_DISPATCH": dispatch,
            "SHOP_RETRY_BACKOFF": "0.05", "SHOP_GATEWAY_FLAKY_FAILURES": "1",
            "SHOP_ADMIN_EMAIL": "admin@example.com", "SHOP_ADMIN_PASSWORD": "the durability test's admin",
        }
        self.token = ""
        self.env.pop("SHOP_MONOLITH_DATABASE_URL", None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "shop", "monolith"], env=self.env,
                                        start_new_session=True, stdout=subprocess.DEVNULL)
        wait_until(self.answers, timeout=60, interval=0.1, message="the monolith to answer")

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def order(self, order_id: str) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/orders/{order_id}", headers=bearer(self.token), timeout=10).json())


@pytest.fixture(params=["sync", "queued"])
def monolith(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Monolith]:
    running = Monolith(tmp_path, request.param)
    running.start()
    running.token, _ = sign_in(running.url, "admin@example.com", "the durability test's admin")
    seed_products_over_http(running.url, running.url, [NewProduct("book", "Book", "5.00", 1_000_000)], running.token)
    yield running
    if running.process is not None:
        stop_process(running.process)


def test_a_monolith_killed_mid_load_finishes_every_accepted_order_exactly_once(monolith: Monolith) -> None:
    accepted: dict[str, str] = {}  # order id -> payment method
    lock, sent = threading.Lock(), iter(range(ORDERS))

    def client() -> None:
        with httpx.Client(timeout=10, headers=bearer(monolith.token)) as http:  # an admin orders for any customer
            for n in sent:
                body = {"customer_id": f"c{n}", "items": [{"product_id": "book", "quantity": 1}],
                        "payment_method": METHODS[n % len(METHODS)]}
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # a client riding out the restart: it retries refused POSTs
                    try:
                        response = http.post(f"{monolith.url}/orders", json=body)
                    except httpx.TransportError:
                        time.sleep(0.05)
                        continue
                    if response.status_code in (201, 202):
                        with lock:
                            accepted[response.json()["id"]] = body["payment_method"]
                    break

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    wait_until(lambda: len(accepted) >= KILL_AFTER, timeout=60, message=f"{KILL_AFTER} orders accepted")
    monolith.kill()
    monolith.start()
    for thread in clients:
        thread.join(120)
    assert len(accepted) >= ORDERS - 3, "at most the requests in flight at the kill went unanswered"

    def settled() -> bool:
        return all(monolith.order(order_id)["notified_at"] for order_id in accepted)

    wait_until(settled, timeout=90, interval=0.5, message="every accepted order settled and notified")
    orders = {order_id: monolith.order(order_id) for order_id in accepted}
    assert {order["status"] for order in orders.values()} <= {"CONFIRMED", "CANCELLED"}
    for order_id, method in accepted.items():
        assert orders[order_id]["status"] == ("CANCELLED" if method == "card_declined" else "CONFIRMED"), method
    lines = Counter(line["order_id"] for line in read_notifications(monolith.directory / "notifications.log"))
    assert all(lines[order_id] == 1 for order_id in accepted), "one notification per order"
    charges = Counter(SqliteLedger(monolith.directory / "var" / "db" / "gateway.sqlite3").charges())
    assert max(charges.values()) == 1, "nobody charged twice"
    assert {o for o, order in orders.items() if order["status"] == "CONFIRMED"} <= set(charges)
