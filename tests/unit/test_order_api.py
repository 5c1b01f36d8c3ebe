"""The order service's HTTP edge, over the in-process bus."""

from __future__ import annotations

import warnings
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from events.memory_bus import InMemoryBus
from order_service.api import create_app
from shop.services import SERVICES

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency; not ours to fix
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def order_request(**overrides) -> dict:
    body = {
        "customer_id": "alice",
        "items": [{"product_id": "book", "quantity": 2, "unit_price": "12.50"}, {"product_id": "pen", "quantity": 1,
                                                                                  "unit_price": "0.99"}],
        "payment_method": "card",
    }
    return {**body, **overrides}


@pytest.fixture
def bus() -> InMemoryBus:
    """A bus nobody listens on: the order stays as the API left it."""
    return InMemoryBus()


@pytest.fixture
def client(bus: InMemoryBus) -> TestClient:
    return TestClient(create_app(bus))


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


def test_with_every_service_in_process_a_placed_order_reads_back_confirmed(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SHOP_NOTIFICATION_LOG", str(tmp_path / "notifications.log"))
    bus = InMemoryBus()
    for spec in SERVICES.values():
        bus.subscribe(spec, spec.dependencies(None))
    client = TestClient(create_app(bus))

    placed = client.post("/orders", json=order_request()).json()

    assert placed["status"] == "PENDING"  # what was accepted; settling happens after the response is decided
    assert client.get(f"/orders/{placed['id']}").json()["status"] == "CONFIRMED"


def test_health_answers(client: TestClient):
    assert client.get("/health").json() == {"status": "ok"}


# -- what the API refuses, and how it says so -------------------------------------------------------------------------
def without(field: str) -> dict:
    body = order_request()
    del body[field]
    return body


def with_line(**overrides) -> dict:
    return order_request(items=[{"product_id": "book", "quantity": 1, "unit_price": "1.00", **overrides}])


@pytest.mark.parametrize(
    ("body", "expected_problem"),
    [
        pytest.param(without("customer_id"), "customer_id: Field required", id="missing field"),
        pytest.param(with_line(quantity=0), "items.0.quantity: Input should be greater than 0", id="quantity 0"),
        pytest.param(with_line(unit_price=19.99), "items.0.unit_price: ", id="float price"),
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
    assert payload["error"] == "invalid request"
    assert any(problem.startswith(expected_problem) for problem in payload["problems"]), payload["problems"]
    assert bus.published == [] and bus.store.documents == {}


def test_a_float_price_is_refused_with_the_reason(client: TestClient):
    problems = client.post("/orders", json=with_line(unit_price=19.99)).json()["problems"]
    assert problems == ["items.0.unit_price: Value error, money must be a decimal string such as '19.99', not a float"]


def test_every_problem_is_listed_at_once(client: TestClient):
    body = order_request(items=[{"product_id": "book", "quantity": 0, "unit_price": 1.5}], total="1.00")
    problems = client.post("/orders", json=body).json()["problems"]
    assert [problem.split(":")[0] for problem in problems] == ["items.0.quantity", "items.0.unit_price", "total"]


def test_an_order_id_that_is_not_a_uuid_is_refused(client: TestClient):
    response = client.get("/orders/not-a-uuid")

    assert response.status_code == 422
    [problem] = response.json()["problems"]
    assert problem.startswith("path.order_id: Input should be a valid UUID")
