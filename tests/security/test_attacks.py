"""Every attack of the trust review, replayed against a running shop (real workers on Redis, the real HTTP apps), each
asserting its refusal. Before the fixes each one succeeded: see the closing note of the trust issue.

Forged events go straight onto the queues, as anyone with access to the broker could put them there; HTTP calls go
through the APIs exactly as a client's would. Overload (Redis at its memory limit) is in test_overload.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import redis
from fastapi.testclient import TestClient

from events.adapters.ed25519.keyring import KeyRing, generate
from events.catalog import Event, OrderCreated, OrderLine, PaymentProcessed, ProductPriceChanged
from events.envelope import Envelope, Sealed
from events.messaging import OutgoingMessage
from events.runtime.celery_worker import make_celery_app
from notification_service.notification_log import read_notifications
from order_service.api import create_app as order_app
from order_service.store import catalogue
from product_service.api import create_app as product_app
from product_service.store import products
from shop.bootstrap import Wiring, declare_topology
from shop.services import SERVICES
from tests.support.builders import admin, http_edge, session_keys, stock_product, token
from tests.support.waiting import wait_until
from user_service.api import create_app as user_app

WORKERS = ("order_service", "product_service", "payment_service", "notification_service")


# --------------------------------------------------------------------------------------------------------------------
# The running shop
# --------------------------------------------------------------------------------------------------------------------
class RunningShop:
    def __init__(self, wiring: Wiring, log_path: Path) -> None:
        self.wiring, self.log_path = wiring, log_path
        edge = http_edge()
        self.orders = TestClient(order_app(wiring, edge))
        self.users = TestClient(user_app(wiring, edge))
        self.products = TestClient(product_app(wiring, edge))

    def order(self, order_id: str) -> dict[str, Any]:
        return dict(self.orders.get(f"/orders/{order_id}", headers=admin()).json())

    def settled(self, order_id: str) -> dict[str, Any]:
        return wait_until(lambda: (order := self.order(order_id))["status"] != "PENDING" and order,
                          timeout=30, message=f"order {order_id} never settled")

    def place(self, customer: str, quantity: int = 1, payment_method: str = "card", **headers: str) -> Any:
        return self.orders.post("/orders", headers={**token(customer), **headers}, json={
            "customer_id": customer, "items": [{"product_id": "book", "quantity": quantity}],
            "payment_method": payment_method})

    def inject(self, service: str, sealed: Sealed) -> None:
        """Onto `service`'s queue, as anyone with access to the broker could."""
        message = OutgoingMessage.to_queue(SERVICES[service].queue, sealed, f"attack-{uuid4()}")
        assert self.wiring.broker.send([message]).sent == [message.id]

    def dead_letter(self, event_id: UUID, service: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((record for record in self.wiring.dead_letters.list(service)
                         if str(event_id) in json.dumps(record.get("message"))), None)

        return wait_until(found, timeout=20, message=f"no dead letter in {service} for {event_id}")

    def notifications_about(self, order_id: str) -> list[dict[str, Any]]:
        return [line for line in read_notifications(self.log_path) if line.get("order_id") == order_id]


@pytest.fixture
def shop(wiring: Wiring, start_worker: Callable[..., subprocess.Popen], tmp_path: Path) -> Iterator[RunningShop]:
    declare_topology(wiring.settings)
    stock_product(wiring, price="10.00", stock=100)
    workers = [start_worker(name) for name in WORKERS]
    running = RunningShop(wiring, Path(os.environ["SHOP_NOTIFICATION_LOG"]))
    yield running
    assert all(worker.poll() is None for worker in workers), "a worker exited during the attacks"


@pytest.fixture(scope="module")
def mallory(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    """An attacker's own keys: one under a name of its own, one claiming to be the payment service."""
    directory = tmp_path_factory.mktemp("mallory")
    generate(directory, ["mallory", "payment_service"])
    return KeyRing.load(directory)


def forged(event: Event, producer: str, correlation_id: UUID, signer: KeyRing, signed_as: str) -> tuple[Sealed, UUID]:
    envelope = Envelope.wrap(event, producer=producer, correlation_id=correlation_id)
    raw = envelope.model_dump_json()
    return Sealed(envelope=raw, signature=signer.sign(signed_as, raw.encode())), envelope.event_id


# --------------------------------------------------------------------------------------------------------------------
# Forged and cross-service events
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_forged_payment_never_confirms_a_declined_order(shop: RunningShop, mallory: KeyRing) -> None:
    # Before: a PaymentProcessed from "mallory" confirmed an order the gateway had declined, and the customer was
    # told it was charged.
    placed = shop.place("alice", payment_method="card_declined")
    order_id = placed.json()["id"]
    assert shop.settled(order_id)["status"] == "CANCELLED"
    payment = PaymentProcessed(order_id=UUID(order_id), payment_id=uuid4(), amount=Decimal("10.00"))
    attempts = {
        "unknown producer": forged(payment, "mallory", UUID(order_id), mallory, "mallory"),
        "bad signature": forged(payment, "payment_service", UUID(order_id), mallory, "payment_service"),
        # A compromised notification service signs with its own real key: it may not speak for payments.
        "not its event": forged(payment, "notification_service", UUID(order_id), session_keys(),
                                "notification_service"),
    }
    for reason, (sealed, event_id) in attempts.items():
        shop.inject("order_service", sealed)
        assert shop.dead_letter(event_id, "order_service")["reason"] == reason

    assert shop.order(order_id)["status"] == "CANCELLED"
    assert [line["type"] for line in shop.notifications_about(order_id)] == ["OrderCancelled"]


@pytest.mark.timeout(120)
def test_a_forged_price_change_cannot_pin_a_price_and_real_changes_still_apply(
    shop: RunningShop, mallory: KeyRing
) -> None:
    # Before: a forged ProductPriceChanged with revision 1e9 pinned the price at 0.00 in the order service's
    # catalogue, and every later real price change was ignored as older.
    pinned = ProductPriceChanged(product_id="book", price=Decimal("0.00"), previous_price=Decimal("10.00"),
                                 revision=10**9)
    sealed, event_id = forged(pinned, "mallory", uuid4(), mallory, "mallory")
    shop.inject("order_service", sealed)
    assert shop.dead_letter(event_id, "order_service")["reason"] == "unknown producer"
    # Even signed with the product service's real key, a revision it could not have issued yet is refused.
    sealed, event_id = forged(pinned, "product_service", uuid4(), session_keys(), "product_service")
    shop.inject("order_service", sealed)
    record = shop.dead_letter(event_id, "order_service")
    assert record["reason"] == "handler error" and "ImplausibleRevision" in record["detail"]

    answer = shop.products.patch("/products/book", headers=admin(), json={"price": "12.00"})
    assert answer.status_code == 200, answer.text
    wait_until(lambda: shop.orders.get("/catalogue/book").json()["price"] == "12.00", timeout=20,
               message="the real price change never reached the order service's catalogue")


@pytest.mark.timeout(120)
def test_a_forged_order_reserves_no_stock(shop: RunningShop, mallory: KeyRing) -> None:
    # Before: a forged OrderCreated reserved real stock.
    before = products(shop.wiring.unit_of_work("product_service")).get("book")
    assert before is not None
    order = OrderCreated(order_id=uuid4(), customer_id="mallory", total=Decimal("10.00"), payment_method="card",
                         items=(OrderLine(product_id="book", quantity=50, unit_price=Decimal("10.00")),))
    attempts = {
        "unknown producer": forged(order, "mallory", order.order_id, mallory, "mallory"),
        "not its event": forged(order, "notification_service", order.order_id, session_keys(),
                                "notification_service"),
    }
    for reason, (sealed, event_id) in attempts.items():
        shop.inject("product_service", sealed)
        assert shop.dead_letter(event_id, "product_service")["reason"] == reason
    # Signed by the order service but priced by the attacker: the product service checks prices, not trusts them.
    cheap = OrderCreated(order_id=uuid4(), customer_id="mallory", total=Decimal("0.50"), payment_method="card",
                         items=(OrderLine(product_id="book", quantity=50, unit_price=Decimal("0.01")),))
    sealed, _ = forged(cheap, "order_service", cheap.order_id, session_keys(), "order_service")
    shop.inject("product_service", sealed)
    placed = shop.place("alice")
    shop.settled(placed.json()["id"])  # a real order after the forged ones: they have been handled by now

    after = products(shop.wiring.unit_of_work("product_service")).get("book")
    assert after is not None and after.stock == before.stock - 1, "only the real order took stock"


# --------------------------------------------------------------------------------------------------------------------
# HTTP: authentication and authorization
# --------------------------------------------------------------------------------------------------------------------
def register(shop: RunningShop, email: str, password: str = "correct horse battery") -> dict[str, Any]:
    answer = shop.users.post("/users", json={"name": email.split("@")[0].title(), "email": email,
                                             "password": password})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def sign_in(shop: RunningShop, email: str, password: str = "correct horse battery") -> dict[str, str]:
    answer = shop.users.post("/token", data={"username": email, "password": password})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.mark.timeout(120)
def test_orders_and_users_are_their_owners_alone(shop: RunningShop) -> None:
    # Before: anyone could read any order and any user's name and email, and place orders for any customer id.
    alice, bob = register(shop, "alice@example.com"), register(shop, "bob@example.com")
    as_alice, as_bob = sign_in(shop, "alice@example.com"), sign_in(shop, "bob@example.com")
    order = {"customer_id": alice["id"], "items": [{"product_id": "book", "quantity": 1}], "payment_method": "card"}

    assert shop.orders.post("/orders", json=order).status_code == 401
    assert shop.orders.post("/orders", json=order, headers=as_bob).status_code == 403
    placed = shop.orders.post("/orders", json=order, headers=as_alice)
    assert placed.status_code == 202, placed.text
    order_id = placed.json()["id"]

    assert shop.orders.get(f"/orders/{order_id}").status_code == 401
    assert shop.orders.get(f"/orders/{order_id}", headers=as_bob).status_code == 404
    assert shop.orders.get(f"/orders/{order_id}", headers=as_alice).status_code == 200
    assert shop.users.get(f"/users/{alice['id']}").status_code == 401
    assert shop.users.get(f"/users/{alice['id']}", headers=as_bob).status_code == 404
    assert shop.users.get(f"/users/{alice['id']}", headers=as_alice).json()["email"] == "alice@example.com"
    assert shop.users.get(f"/users/{bob['id']}", headers=as_alice).status_code == 404
    assert shop.users.post("/token", data={"username": "alice@example.com", "password": "guess"}).status_code == 401


def test_a_token_not_signed_by_the_user_service_is_refused(shop: RunningShop, mallory: KeyRing) -> None:
    import jwt

    forged_admin = jwt.encode({"sub": "mallory", "role": "admin", "iss": "user_service", "aud": "shop", "iat": 1,
                               "exp": 4102444800},
                              mallory.private["payment_service"], algorithm="EdDSA")
    unsigned = jwt.encode({"sub": "mallory", "role": "admin", "iss": "user_service"}, key=None, algorithm="none")
    for bearer in (forged_admin, unsigned, "not-a-jwt"):
        answer = shop.products.patch("/products/book", headers={"Authorization": f"Bearer {bearer}"},
                                     json={"price": "0.00"})
        assert answer.status_code == 401, bearer


def test_only_an_admin_writes_products(shop: RunningShop) -> None:
    # Before: anyone could PATCH a product's price to 0.00.
    assert shop.products.patch("/products/book", json={"price": "0.00"}).status_code == 401
    assert shop.products.patch("/products/book", headers=token("alice"), json={"price": "0.00"}).status_code == 403
    new = {"id": "lamp", "name": "Lamp", "price": "5.00", "stock": 1}
    assert shop.products.post("/products", headers=token("alice"), json=new).status_code == 403
    assert shop.products.get("/products/book").json()["price"] == "10.00", "reads stay public"
    assert shop.products.post("/products", headers=admin(), json=new).status_code == 201


def test_a_second_registration_of_an_email_reveals_nothing(shop: RunningShop) -> None:
    # Before: the 409 returned the existing user's id (account enumeration).
    first = register(shop, "carol@example.com")
    again = shop.users.post("/users", json={"name": "Carol", "email": "carol@example.com",
                                            "password": "another password"})
    assert again.status_code == 409
    assert first["id"] not in again.text and again.headers["content-type"] == "application/problem+json"


# --------------------------------------------------------------------------------------------------------------------
# HTTP: unbounded input
# --------------------------------------------------------------------------------------------------------------------
def test_a_huge_body_is_refused_before_it_is_read_whole(shop: RunningShop) -> None:
    # Before: a 50 MB body was read whole before its 422 (8 parallel 39 MB bodies: 687 MB RSS).
    declared = shop.orders.post("/orders", headers={**token("alice"), "content-type": "application/json"},
                                content=b"x" * (50 * 1024 * 1024))
    assert declared.status_code == 413
    # Without a Content-Length the body arrives chunk by chunk: driven at the ASGI level, to count what the app
    # pulled before it answered (a test client would buffer the whole body first).
    pulled, sent = streamed_post(shop.orders.app, "/orders", chunks=800, chunk=b" " * 65536)
    assert sent[0]["status"] == 413
    assert pulled <= 2, f"{pulled} chunks of 64 KiB were read before the refusal"


def streamed_post(app: Any, path: str, chunks: int, chunk: bytes) -> tuple[int, list[dict[str, Any]]]:
    pulled = 0
    sent: list[dict[str, Any]] = []
    headers = [(b"content-type", b"application/json"), *((name.lower().encode(), value.encode())
                                                          for name, value in token("alice").items())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled >= chunks:
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < chunks}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message)

    asyncio.run(app(scope, receive, send))
    return pulled, sent


def test_a_total_that_overflows_is_refused_not_a_server_error(shop: RunningShop) -> None:
    # Before: a price of 999999999999.99 x 2 gave a 500.
    huge = {"id": "yacht", "name": "Yacht", "price": "999999999999.99", "stock": 10}
    assert shop.products.post("/products", headers=admin(), json=huge).status_code == 201
    wait_until(lambda: shop.orders.get("/catalogue/yacht").status_code == 200, timeout=20)
    answer = shop.orders.post("/orders", headers=token("alice"), json={
        "customer_id": "alice", "items": [{"product_id": "yacht", "quantity": 2}], "payment_method": "card"})
    assert answer.status_code == 422 and "total" in answer.text


@pytest.mark.parametrize("price", ["1_000", "١٠٠", " 10.00", "10.00 ", "010.00", "1e3", "10.001", "-1.00", "NaN"])
def test_money_is_a_plain_decimal_string(shop: RunningShop, price: str) -> None:
    # Before: "1_000", Arabic-Indic digits and padded prices were accepted as money.
    answer = shop.products.post("/products", headers=admin(), json={"name": "Odd", "price": price, "stock": 1})
    assert answer.status_code == 422, price


@pytest.mark.timeout(120)
def test_a_retried_post_with_its_idempotency_key_places_one_order(shop: RunningShop) -> None:
    # Before: there was no idempotency key; a retried POST made two orders.
    first = shop.place("alice", quantity=1, **{"Idempotency-Key": "checkout-42"})
    again = shop.place("alice", quantity=1, **{"Idempotency-Key": "checkout-42"})
    assert first.status_code == 202 and again.status_code in (201, 202)
    assert again.json()["id"] == first.json()["id"]
    other = shop.place("alice", quantity=2, **{"Idempotency-Key": "checkout-42"})
    assert other.status_code == 409
    shop.settled(first.json()["id"])
    stocked = products(shop.wiring.unit_of_work("product_service")).get("book")
    assert stocked is not None and stocked.stock == 99, "one order took stock, once"


# --------------------------------------------------------------------------------------------------------------------
# The broker: remote control, oversize dead letters, secrets, purge
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_celery_remote_control_cannot_stop_a_consumer(shop: RunningShop) -> None:
    # Before: `cancel_consumer` from anyone with Redis access silently stopped the payment service.
    control = make_celery_app("mallory", shop.wiring.settings)
    control.control.cancel_consumer(SERVICES["payment_service"].queue)
    control.control.broadcast("shutdown")
    assert not control.control.inspect(timeout=1.0).ping(), "a worker answered remote control"
    placed = shop.place("alice")
    assert shop.settled(placed.json()["id"])["status"] == "CONFIRMED"


def test_a_huge_message_is_dead_lettered_as_its_head_size_and_hash(
    shop: RunningShop, redis_client: redis.Redis
) -> None:
    # Before: dead letters stored oversize bodies whole (10 MB each, no cap on the store).
    redis_client.lpush(SERVICES["product_service"].queue, b"x" * (10 * 1024 * 1024))

    def record() -> dict[str, Any] | None:
        return next(iter(shop.wiring.dead_letters.list("product_service")), None)

    kept = wait_until(record, timeout=20)
    stored = json.dumps(kept)
    assert len(stored) < 200 * 1024, f"{len(stored)} bytes stored"
    message = kept["message"]
    assert message["truncated"] is True and message["size"] > 10 * 1024 * 1024 and len(message["sha256"]) == 64


def shop_command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shop", *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)


def test_an_unreachable_server_is_one_line_without_its_password(redis_url: str, tmp_path: Path) -> None:
    # Before: an unreachable REDIS_URL error printed the password.
    for args in (["status"], ["up"], ["worker", "order_service"]):
        done = shop_command(*args, REDIS_URL="redis://:s3cret-password@127.0.0.1:1/0",
                            SHOP_VAR_DIR=str(tmp_path / "var"))
        assert done.returncode == 1, (args, done.stderr[-2000:])
        assert "s3cret-password" not in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert "does not answer" in done.stderr or "connecting to" in done.stderr


def test_dlq_purge_reports_what_it_deleted(shop: RunningShop) -> None:
    # Before: `shop dlq purge` reported "purged 0" after deleting 30.
    for n in range(30):
        shop.wiring.dead_letters.add("payment_service", "test", "", f"message {n}", 1)
    done = shop_command("dlq", "purge", "--yes")
    assert done.returncode == 0, done.stderr
    assert "purged 30 dead letters" in done.stdout
    assert shop.wiring.dead_letters.list("payment_service") == []


@pytest.mark.parametrize("command", [["worker", "order_service"], ["api", "order_service"], ["up"]])
def test_no_process_starts_without_its_keys(redis_url: str, tmp_path: Path, command: list[str]) -> None:
    # Before: one public demo key signed everything and nothing warned when it was in use.
    done = shop_command(*command, SHOP_KEYS_DIR=str(tmp_path / "no-keys"), SHOP_VAR_DIR=str(tmp_path / "var"))
    assert done.returncode == 1
    assert "MissingKeys" in done.stderr and "shop keys generate" in done.stderr.replace("\n", " ")


def test_the_catalogue_projection_is_unchanged_by_the_attacks_it_refused(shop: RunningShop, mallory: KeyRing) -> None:
    pinned = ProductPriceChanged(product_id="book", price=Decimal("0.00"), previous_price=Decimal("10.00"),
                                 revision=2)
    sealed, event_id = forged(pinned, "payment_service", uuid4(), mallory, "payment_service")
    shop.inject("order_service", sealed)
    assert shop.dead_letter(event_id, "order_service")["reason"] == "bad signature"
    product = catalogue(shop.wiring.unit_of_work("order_service")).get("book")
    assert product is not None and product.price == Decimal("10.00")
