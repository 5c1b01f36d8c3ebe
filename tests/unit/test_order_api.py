"""The order service's HTTP edge, over the in-process bus."""

from __future__ import annotations

import warnings
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from events.memory import InMemoryBus
from order_service.api import create_app
from order_service.domain import CataloguedProduct
from order_service.store import catalogue as catalogue_of
from shop.monolith import create_monolith_app
from tests.support.builders import admin, http_edge, token
from tests.support.shop import in_process_bus

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency; not ours to fix
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def order_request(**overrides) -> dict:
    body = {
        "customer_id": "alice",
        "items": [{"product_id": "book", "quantity": 2}, {"product_id": "pen", "quantity": 1}],
        "payment_method": "card",
    }
    return {**body, **overrides}


def catalogue(bus: InMemoryBus, **prices: str) -> None:
    """Put products straight into the order service's catalogue (what its projection makes of ProductCreated)."""
    uow = bus.unit_of_work("order_service")
    for product_id, price in prices.items():
        catalogue_of(uow).get(product_id)  # read first: the commit checks the version it read
        catalogue_of(uow).save(CataloguedProduct(product_id=product_id, name=product_id, price=price, price_revision=1,
                                              stock=10, stock_revision=1))
    bus.commit(uow)


@pytest.fixture
def bus() -> InMemoryBus:
    """A bus nobody listens on: the order stays as the API left it. Its catalogue knows a book and a pen."""
    bus = InMemoryBus()
    catalogue(bus, book="12.50", pen="0.99")
    return bus


@pytest.fixture
def client(bus: InMemoryBus) -> TestClient:
    return TestClient(create_app(bus, http_edge()), headers=token("alice"))


def test_placing_an_order_is_accepted_as_pending(client: TestClient, bus: InMemoryBus):
    response = client.post("/orders", json=order_request())

    assert response.status_code == 202
    order = response.json()
    UUID(order["id"])
    assert order["status"] == "PENDING"
    assert order["total"] == "25.99"
    assert order["customer_id"] == "alice"
    [created] = bus.published
    assert created.type == "OrderCreated"
    assert created.payload["order_id"] == order["id"] and created.payload["total"] == "25.99"


def test_a_placed_order_can_be_read_back(client: TestClient):
    placed = client.post("/orders", json=order_request()).json()

    response = client.get(f"/orders/{placed['id']}")

    assert response.status_code == 200
    assert response.json() == placed


def test_an_unknown_order_is_not_found(client: TestClient):
    order_id = uuid4()
    response = client.get(f"/orders/{order_id}")
    assert response.status_code == 404
    assert str(order_id) in response.json()["detail"]


def test_the_client_does_not_set_the_price(client: TestClient):
    response = client.post("/orders", json=order_request(items=[{"product_id": "book", "quantity": 1,
                                                                 "unit_price": "0.01"}]))

    assert response.status_code == 422
    assert response.json()["problems"] == ["items.0.unit_price: Extra inputs are not permitted"]


def test_an_order_is_priced_from_the_catalogue_as_it_stands(client: TestClient, bus: InMemoryBus):
    first = client.post("/orders", json=order_request()).json()
    catalogue(bus, book="20.00")

    second = client.post("/orders", json=order_request()).json()

    assert (first["total"], second["total"]) == ("25.99", "40.99")
    assert [line["unit_price"] for line in second["items"]] == ["20.00", "0.99"]


def test_an_order_for_an_unknown_product_is_refused_at_the_door(client: TestClient, bus: InMemoryBus):
    body = order_request(items=[{"product_id": "book", "quantity": 1}, {"product_id": "unicorn", "quantity": 1}])

    response = client.post("/orders", json=body)

    assert response.status_code == 422
    assert response.json()["problems"] == ["items.1.product_id: unknown product 'unicorn'"]
    assert bus.published == []


def test_the_catalogue_shows_what_the_order_service_knows(client: TestClient):
    assert client.get("/catalogue/book").json()["price"] == "12.50"
    assert client.get("/catalogue/unicorn").status_code == 404


def test_with_every_service_in_process_a_placed_order_reads_back_confirmed(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SHOP_NOTIFICATION_LOG", str(tmp_path / "notifications.log"))
    client = TestClient(create_monolith_app(in_process_bus(), http_edge()), headers=admin())
    book = {"id": "book", "name": "Book", "price": "12.50", "stock": 5}
    assert client.post("/products", json=book).status_code == 201
    assert client.post("/products", json={"id": "pen", "name": "Pen", "price": "0.99", "stock": 5}).status_code == 201

    placed = client.post("/orders", json=order_request()).json()

    assert placed["status"] == "PENDING"  # what was accepted; settling happens after the response is decided
    assert client.get(f"/orders/{placed['id']}").json()["status"] == "CONFIRMED"
    assert client.get("/products/book").json()["stock"] == 3


def test_health_answers(client: TestClient):
    assert client.get("/health").json() == {"status": "ok"}


# -- what the API refuses, and how it says so -------------------------------------------------------------------------
def without(field: str) -> dict:
    body = order_request()
    del body[field]
    return body


def with_line(**overrides) -> dict:
    return order_request(items=[{"product_id": "book", "quantity": 1, **overrides}])


@pytest.mark.parametrize(
    ("body", "expected_problem"),
    [
        pytest.param(without("customer_id"), "customer_id: Field required", id="missing field"),
        pytest.param(with_line(quantity=0), "items.0.quantity: Input should be greater than 0", id="quantity 0"),
        pytest.param(with_line(product_id=""), "items.0.product_id: String should have at least 1 character",
                     id="empty product id"),
        pytest.param(order_request(total="0.01"), "total: Extra inputs are not permitted", id="extra field"),
        pytest.param(order_request(items=[]), "items: List should have at least 1 item", id="empty items"),
        pytest.param(with_line(colour="red"), "items.0.colour: Extra inputs are not permitted", id="extra line field"),
    ],
)
def test_an_invalid_order_is_refused_with_readable_problems(
    client: TestClient, bus: InMemoryBus, body: dict, expected_problem: str
):
    response = client.post("/orders", json=body)

    assert response.status_code == 422
    payload = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert (payload["status"], payload["title"]) == (422, "Unprocessable Content")
    assert any(problem.startswith(expected_problem) for problem in payload["problems"]), payload["problems"]
    assert bus.published == [] and bus.store.documents("order_service", "order") == {}


def test_every_problem_is_listed_at_once(client: TestClient):
    body = order_request(items=[{"product_id": "book", "quantity": 0, "unit_price": "1.50"}], total="1.00")
    problems = client.post("/orders", json=body).json()["problems"]
    assert [problem.split(":")[0] for problem in problems] == ["items.0.quantity", "items.0.unit_price", "total"]


def test_an_order_id_that_is_not_a_uuid_is_refused(client: TestClient):
    response = client.get("/orders/not-a-uuid")

    assert response.status_code == 422
    [problem] = response.json()["problems"]
    assert problem.startswith("path.order_id: Input should be a valid UUID")
