"""Every HTTP API describes itself: FastAPI's /openapi.json lists each endpoint the app serves, so clients can be
generated from it and the docs (/docs) are never behind the code."""

from __future__ import annotations

import warnings

import pytest
from fastapi.routing import APIRoute

from events.memory_bus import InMemoryBus
from shop.services import APIS

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency; not ours to fix
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.mark.parametrize("service", list(APIS))
def test_openapi_json_lists_every_endpoint_of_the_api(service: str) -> None:
    app = APIS[service].create_app(InMemoryBus())
    document = TestClient(app).get("/openapi.json").json()
    served = {(route.path, method.lower()) for route in app.routes if isinstance(route, APIRoute)
              and route.include_in_schema for method in route.methods}
    listed = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert listed == served
    assert ("/health", "get") in listed
    assert document["openapi"].startswith("3.")


def test_the_order_api_documents_placing_and_reading_orders() -> None:
    document = TestClient(APIS["order_service"].create_app(InMemoryBus())).get("/openapi.json").json()
    assert "post" in document["paths"]["/orders"]
    assert "get" in document["paths"]["/orders/{order_id}"]
    request_body = document["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request_body["$ref"].rsplit("/", 1)[1] in document["components"]["schemas"]
