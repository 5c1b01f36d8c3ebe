"""The console's HTTP side with a fake view: the page and its views are open, every action needs an admin."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from shop.console.app import create_console_app
from shop.console.samples import SampleOrders
from tests.support.builders import admin, http_edge, token

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency; not ours to fix
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


class FakeView:
    mode = "microservices"
    streams_events = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def board(self) -> dict[str, Any]:
        return {"mode": self.mode, "services": {"payment_service": {"waiting": 3}}}

    def latest_events(self, count: int) -> list[dict[str, Any]]:
        return []

    def events_after(self, after: str, count: int, block_ms: int) -> list[dict[str, Any]]:
        return []

    def journey(self, order_id: str) -> dict[str, Any]:
        return {"order_id": order_id, "events": []}

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return []

    def replay(self, record_id: str) -> str:
        raise KeyError(record_id)

    def purge(self, record_id: str) -> None:
        self.calls.append(("purge", record_id))

    def stop_workers(self, service: str) -> None:
        self.calls.append(("stop", service))

    def start_workers(self, service: str) -> None:
        self.calls.append(("start", service))

    def services(self) -> list[str]:
        return ["payment_service"]


@pytest.fixture
def view() -> FakeView:
    return FakeView()


@pytest.fixture
def client(view: FakeView, tmp_path: Path) -> TestClient:
    samples = SampleOrders("http://127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9", fault_injection=False)
    return TestClient(create_console_app(view, http_edge(), samples, "http://127.0.0.1:9", tmp_path / "log"))


def test_the_page_and_the_board_need_no_token(client: TestClient) -> None:
    assert "<title>shop console</title>" in client.get("/").text
    assert client.get("/static/console.js").status_code == 200
    assert client.get("/api/board").json()["services"]["payment_service"]["waiting"] == 3


@pytest.mark.parametrize("caller, status", [(None, 401), ("customer", 403)])
def test_stopping_workers_needs_an_admin(client: TestClient, view: FakeView, caller: str | None, status: int) -> None:
    headers = token("alice") if caller else {}

    assert client.post("/api/services/payment_service/stop", headers=headers).status_code == status
    assert view.calls == []


def test_an_admin_stops_and_starts_a_service_s_workers(client: TestClient, view: FakeView) -> None:
    assert client.post("/api/services/payment_service/stop", headers=admin()).status_code == 200
    assert client.post("/api/services/payment_service/start", headers=admin()).status_code == 200
    assert client.post("/api/services/nobody/stop", headers=admin()).status_code == 404
    assert view.calls == [("stop", "payment_service"), ("start", "payment_service")]


def test_a_poison_order_is_refused_without_fault_injection(client: TestClient) -> None:
    response = client.post("/api/orders", json={"outcome": "poison", "count": 1}, headers=admin())

    assert response.status_code == 409
    assert "SHOP_FAULT_INJECTION" in response.json()["detail"]


def test_an_unknown_dead_letter_is_not_found(client: TestClient) -> None:
    assert client.post("/api/dead-letters/nope/replay", headers=admin()).status_code == 404
