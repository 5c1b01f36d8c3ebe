"""The stock step of the order saga and its compensation, the projections it relies on, and the user and product
edges, all on the in-process bus."""

from __future__ import annotations

import warnings
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import pytest

from events.catalog import (
    OrderCreated,
    OrderItem,
    OrderLine,
    PaymentFailed,
    ProductCreated,
    ProductPriceChanged,
    StockLevel,
    StockReleased,
)
from events.memory import InMemoryBus
from order_service.domain import OrderStatus
from order_service.handlers import place_order
from order_service.store import catalogue
from product_service.domain import ReservationStatus
from product_service.handlers import change_price
from product_service.store import reservations
from shop.monolith import create_monolith_app
from tests.support.builders import admin, http_edge
from tests.support.shop import Shop, in_process_bus

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def log_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "notifications.log"
    monkeypatch.setenv("SHOP_NOTIFICATION_LOG", str(path))
    return path


@pytest.fixture
def shop(log_path: Path) -> Shop:
    return Shop(log_path, stock=3)


def reservation(shop: Shop, order_id):
    return reservations(shop.bus.unit_of_work("product_service")).get(order_id)


def catalogued(shop: Shop, product_id: str):
    return catalogue(shop.bus.unit_of_work("order_service")).get(product_id)


def replay_as_new_message(shop: Shop, type_name: str) -> None:
    """The same event again, in a *new* message (a new event id: the inbox cannot recognise it)."""
    [original] = [envelope for envelope in shop.bus.published if envelope.type == type_name]
    shop.publish(original.event(), correlation_id=original.correlation_id)


# -- reservation ------------------------------------------------------------------------------------------------------
def test_an_order_takes_its_stock_before_it_is_charged(shop: Shop):
    order = shop.place("card", quantity=2)

    assert shop.stock("book") == 1
    assert reservation(shop, order.id).status is ReservationStatus.RESERVED
    assert catalogued(shop, "book").stock == 1  # the order service's projection follows
    assert shop.order(order.id).status is OrderStatus.CONFIRMED


def test_an_order_beyond_the_stock_is_cancelled_with_the_reason_and_never_charged(shop: Shop):
    order = shop.place("card", quantity=4)

    cancelled = shop.order(order.id)
    assert cancelled.status is OrderStatus.CANCELLED
    assert cancelled.reason == "out of stock: Book (4 wanted, 3 left)"
    assert shop.stock("book") == 3
    assert shop.payment(order.id) is None and shop.ledger.charges == []
    assert shop.published_types() == ["OrderCreated", "StockRejected", "OrderCancelled", "NotificationSent"]
    [notification] = shop.notifications()
    assert "out of stock" in notification["message"]


def test_a_reservation_is_all_or_nothing(shop: Shop):
    uow = shop.bus.unit_of_work("order_service")
    order = place_order(uow, customer_id="alice", payment_method="card",
                        items=[OrderItem(product_id="pen", quantity=1), OrderItem(product_id="book", quantity=9)])
    shop.bus.commit(uow)

    assert shop.order(order.id).status is OrderStatus.CANCELLED
    assert (shop.stock("pen"), shop.stock("book")) == (3, 3)


def test_the_same_order_in_a_second_message_reserves_nothing_twice(shop: Shop):
    order = shop.place("card", quantity=1)

    replay_as_new_message(shop, "OrderCreated")

    assert shop.stock("book") == 2
    assert shop.published_types().count("StockReserved") == 1
    assert shop.ledger.charges == [str(order.id)]


# -- compensation -----------------------------------------------------------------------------------------------------
def test_a_failed_payment_puts_the_stock_back_and_cancels_the_order(shop: Shop):
    order = shop.place("card_declined", quantity=2)

    assert shop.order(order.id).status is OrderStatus.CANCELLED
    assert shop.stock("book") == 3
    assert reservation(shop, order.id).status is ReservationStatus.RELEASED
    [released] = [envelope for envelope in shop.bus.published if envelope.type == "StockReleased"]
    assert released.event() == StockReleased(
        order_id=order.id, lines=(StockLevel(product_id="book", quantity=2, stock=3, revision=3),)
    )
    assert catalogued(shop, "book").stock == 3


def test_a_payment_failure_in_a_second_message_releases_nothing_twice(shop: Shop):
    shop.place("card_declined", quantity=2)

    replay_as_new_message(shop, "PaymentFailed")

    assert shop.stock("book") == 3
    assert shop.published_types().count("StockReleased") == 1


def test_a_payment_failure_for_a_rejected_reservation_releases_nothing(shop: Shop):
    order = shop.place("card", quantity=5)

    shop.publish(PaymentFailed(order_id=order.id, amount="62.50", reason="stray"), correlation_id=order.id)

    assert shop.stock("book") == 3
    assert "StockReleased" not in shop.published_types()


# -- the projections --------------------------------------------------------------------------------------------------
def test_a_new_price_applies_to_orders_placed_after_it(shop: Shop):
    before = shop.place("card", quantity=1)
    shop.publish(ProductPriceChanged(product_id="book", price="20.00", previous_price="12.50", revision=50),
                 correlation_id=uuid4())

    after = shop.place("card", quantity=1)

    assert (before.total, after.total) == (Decimal("12.50"), Decimal("20.00"))
    assert shop.order(before.id).total == Decimal("12.50")


def test_an_older_product_event_never_rolls_the_projection_back(shop: Shop):
    shop.publish(ProductPriceChanged(product_id="book", price="20.00", previous_price="12.50", revision=9),
                 correlation_id=uuid4())
    shop.publish(ProductPriceChanged(product_id="book", price="15.00", previous_price="12.50", revision=8),
                 correlation_id=uuid4())
    shop.publish(ProductCreated(product_id="book", name="Book", price="1.00", stock=0, revision=1),
                 correlation_id=uuid4())

    product = catalogued(shop, "book")
    assert (product.price, product.stock) == (Decimal("20.00"), 3)


def test_a_revision_the_product_service_could_not_have_issued_is_refused_not_believed(shop: Shop):
    """A price 'at revision 1e9' would pin the projection for ever: later real changes would all look older."""
    shop.publish(ProductPriceChanged(product_id="book", price="0.00", previous_price="12.50", revision=10**9),
                 correlation_id=uuid4())
    shop.publish(ProductPriceChanged(product_id="book", price="14.00", previous_price="12.50", revision=2),
                 correlation_id=uuid4())

    [dead] = shop.bus.dead_letters
    assert dead["reason"] == "handler error" and "ImplausibleRevision" in dead["detail"]
    assert catalogued(shop, "book").price == Decimal("14.00")


def test_an_order_at_a_price_the_product_never_had_is_refused_before_any_stock_is_taken(shop: Shop):
    """The order service prices orders, but the product service does not take its word for it: an OrderCreated with
    a price the product never had (or a total that is not the lines' sum) reserves nothing and is never charged."""
    order_id = uuid4()
    forged = OrderCreated(order_id=order_id, customer_id="mallory", payment_method="card", total="0.01",
                          items=(OrderLine(product_id="book", quantity=2, unit_price="0.01"),))
    shop.publish(forged, correlation_id=order_id)

    [reserving] = [e for e in shop.bus.published if e.type in ("StockReserved", "StockRejected")]
    assert reserving.type == "StockRejected"
    assert reserving.event().reason == "prices not the catalogue's: book at 0.01, a total of 0.01 for these lines"
    assert shop.stock("book") == 3 and shop.ledger.charges == []


def test_an_order_at_the_price_the_catalogue_still_had_is_reserved(shop: Shop):
    """The order service's catalogue lags behind by the events in its queue: an order priced just before a price
    change is still one of the product service's prices."""
    order_id = uuid4()
    uow = shop.bus.unit_of_work("product_service")
    change_price(uow, product_id="book", price=Decimal("15.00"))
    shop.bus.commit(uow)
    lagging = OrderCreated(order_id=order_id, customer_id="alice", payment_method="card", total="12.50",
                           items=(OrderLine(product_id="book", quantity=1, unit_price="12.50"),))
    shop.publish(lagging, correlation_id=order_id)

    assert "StockReserved" in shop.published_types()


def test_a_price_that_overtakes_its_product_is_retried_not_dropped(log_path: Path):
    shop = Shop(log_path)
    shop.bus.max_retries = 0  # one attempt: the event must be dead-lettered for a retry, not silently ignored

    shop.publish(ProductPriceChanged(product_id="lamp", price="5.00", previous_price="4.00", revision=2),
                 correlation_id=uuid4())

    [dead] = shop.bus.dead_letters
    assert (dead["service"], dead["reason"]) == ("order_service", "retries exhausted")
    assert catalogued(shop, "lamp") is None


# -- notifications addressed to the customer --------------------------------------------------------------------------
def monolith(log_path: Path) -> tuple[InMemoryBus, TestClient]:
    bus = in_process_bus()
    client = TestClient(create_monolith_app(bus, http_edge()), headers=admin())
    book = {"id": "book", "name": "Book", "price": "12.50", "stock": 5}
    assert client.post("/products", json=book).status_code == 201
    return bus, client


def test_a_registered_customer_is_notified_by_name(log_path: Path):
    _, client = monolith(log_path)
    user = client.post("/users", json={"name": "Ada Lovelace", "email": "ada@example.com",
                                       "password": "correct horse"}).json()

    client.post("/orders", json={"customer_id": user["id"], "items": [{"product_id": "book", "quantity": 1}],
                                 "payment_method": "card"})

    [line] = Shop(log_path).notifications()
    assert line["to"] == "Ada Lovelace <ada@example.com>"
    assert line["message"].startswith("Hello Ada Lovelace,")
    assert line["customer_id"] == user["id"]


def test_an_unknown_customer_is_still_notified_addressed_by_id(log_path: Path):
    _, client = monolith(log_path)

    client.post("/orders", json={"customer_id": "guest-7", "items": [{"product_id": "book", "quantity": 1}],
                                 "payment_method": "card"})

    [line] = Shop(log_path).notifications()
    assert line["to"] == "guest-7" and line["message"].startswith("Hello guest-7,")


# -- the user and product edges ---------------------------------------------------------------------------------------
def test_a_user_is_registered_once_per_email(log_path: Path):
    bus, client = monolith(log_path)

    created = client.post("/users", json={"name": "Bob", "email": "bob@example.com", "password": "correct horse"})
    again = client.post("/users", json={"name": "Robert", "email": "BOB@example.com", "password": "battery staple"})

    assert created.status_code == 201 and created.json()["name"] == "Bob" and created.json()["role"] == "customer"
    assert again.status_code == 409
    assert created.json()["id"] not in again.text, "a second registration does not tell whose address it is"
    assert "password" not in created.text
    assert client.get(f"/users/{created.json()['id']}").json() == created.json()
    assert [envelope.type for envelope in bus.published].count("UserRegistered") == 1


@pytest.mark.parametrize(("body", "problem"), [
    ({"name": "", "email": "a@b.co", "password": "long enough"}, "name: String should have at least 1 character"),
    ({"name": " Ann", "email": "a@b.co", "password": "long enough"}, "name: String should match pattern"),
    ({"name": "Ann", "email": "not-an-address", "password": "long enough"}, "email: value is not a valid email"),
    ({"name": "Ann", "email": "a@b.c\u0000", "password": "long enough"}, "email: value is not a valid email"),
    ({"name": "Ann", "email": "a@b.co", "password": "short"}, "password: String should have at least 8 characters"),
    ({"name": "Ann", "email": "a@b.co", "password": "long enough", "role": "admin"},
     "role: Extra inputs are not permitted"),
])
def test_a_bad_registration_is_refused_with_readable_problems(log_path: Path, body: dict, problem: str):
    _, client = monolith(log_path)
    response = client.post("/users", json=body)
    assert response.status_code == 422
    assert any(line.startswith(problem) for line in response.json()["problems"]), response.json()


def test_an_unknown_user_or_product_is_not_found(log_path: Path):
    _, client = monolith(log_path)
    assert client.get(f"/users/{uuid4()}").status_code == 404
    assert client.get("/products/unicorn").status_code == 404
    assert client.patch("/products/unicorn", json={"price": "1.00"}).status_code == 404


def test_a_product_is_created_once_and_its_price_can_change(log_path: Path):
    bus, client = monolith(log_path)

    assert client.post("/products", json={"id": "book", "name": "Book", "price": "1.00", "stock": 1}).status_code == 409
    changed = client.patch("/products/book", json={"price": "14.00"})

    assert changed.status_code == 200 and changed.json()["price"] == "14.00"
    assert client.get("/catalogue/book").json()["price"] == "14.00"
    assert client.post("/products", json={"name": "Mug", "price": 7.0, "stock": 1}).status_code == 422
    assert [envelope.type for envelope in bus.published] == ["ProductCreated", "ProductPriceChanged"]


def test_a_product_created_without_an_id_gets_one(log_path: Path):
    _, client = monolith(log_path)
    created = client.post("/products", json={"name": "Mug", "price": "7.00", "stock": 2}).json()
    assert client.get(f"/products/{created['id']}").json()["stock"] == 2
