"""What every HTTP edge answers to the ecosystem's tools: /health/live without any I/O, /health/ready from the edge's
`ready` check (503 problem+json with Retry-After when it fails), and /metrics in Prometheus' text format, requests
counted by route template."""

from __future__ import annotations

import warnings
from dataclasses import replace
from uuid import uuid4

import pytest
from prometheus_client.parser import text_string_to_metric_families

from events.http import PROBLEM, Edge, NotReady
from events.memory import InMemoryBus
from order_service.api import create_app
from shop.monolith import create_monolith_app
from shop.services import APIS
from tests.support.builders import http_edge, token

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency; not ours to fix
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


class Check:
    """A `ready` check that counts its calls and fails while `failure` is set."""

    def __init__(self) -> None:
        self.calls, self.failure = 0, None

    def __call__(self) -> None:
        self.calls += 1
        if self.failure is not None:
            raise self.failure


def edge_with(check: Check) -> Edge:
    return replace(http_edge(), ready=check)


def every_app(edge: Edge) -> dict[str, TestClient]:
    apps = {service: api.create_app(InMemoryBus(), edge) for service, api in APIS.items()}
    apps["monolith"] = create_monolith_app(InMemoryBus(), edge)
    return {name: TestClient(app) for name, app in apps.items()}


def samples(text: str, metric: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of one metric family, parsed by prometheus_client's own parser."""
    return [(sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text) if family.name == metric
            for sample in family.samples]


def test_every_api_is_live_without_asking_anything_even_when_not_ready() -> None:
    check = Check()
    check.failure = NotReady("the store of order_service does not answer (ConnectionError)")
    for name, client in every_app(edge_with(check)).items():
        for path in ("/health/live", "/health"):
            response = client.get(path)
            assert response.status_code == 200 and response.json() == {"status": "ok"}, (name, path)
    assert check.calls == 0


def test_every_api_is_ready_when_its_check_passes_and_asks_it_each_time() -> None:
    check = Check()
    clients = every_app(edge_with(check))
    for name, client in clients.items():
        response = client.get("/health/ready")
        assert response.status_code == 200 and response.json() == {"status": "ok"}, name
    assert check.calls == len(clients)


def test_not_ready_is_a_503_problem_with_retry_after_naming_what_does_not_answer() -> None:
    check = Check()
    check.failure = NotReady("Redis does not answer (ConnectionError)")
    for name, client in every_app(edge_with(check)).items():
        response = client.get("/health/ready")
        assert response.status_code == 503, name
        assert response.headers["content-type"] == PROBLEM and response.headers["retry-after"] == "1", name
        assert response.json() == {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                                   "detail": "Redis does not answer (ConnectionError)"}, name


def test_an_unavailable_error_from_the_check_is_a_503_too() -> None:
    check = Check()
    check.failure = ConnectionError("refused")
    edge = replace(edge_with(check), unavailable=(ConnectionError,))
    response = TestClient(create_app(InMemoryBus(), edge)).get("/health/ready")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == PROBLEM


def test_an_edge_without_a_check_is_ready() -> None:
    assert TestClient(create_app(InMemoryBus(), http_edge())).get("/health/ready").status_code == 200


def test_metrics_count_requests_by_method_route_template_and_status_and_time_them() -> None:
    client = TestClient(create_app(InMemoryBus(), http_edge()), headers=token("alice"))
    ids = [str(uuid4()), str(uuid4())]
    for order_id in ids:
        assert client.get(f"/orders/{order_id}").status_code == 404
    assert client.get("/no/such/path").status_code == 404

    response = client.get("/metrics")

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    requests = {(labels["method"], labels["route"], labels["status"]): value
                for name, labels, value in samples(response.text, "http_requests") if name == "http_requests_total"}
    assert requests == {("GET", "/orders/{order_id}", "404"): 2.0, ("GET", "unmatched", "404"): 1.0}
    assert not any(order_id in response.text for order_id in ids), "a raw path became a label"
    counts = {labels["route"]: value for name, labels, value in samples(response.text, "http_request_duration_seconds")
              if name == "http_request_duration_seconds_count"}
    assert counts == {"/orders/{order_id}": 2.0, "unmatched": 1.0}
    buckets = [value for name, labels, value in samples(response.text, "http_request_duration_seconds")
               if name == "http_request_duration_seconds_bucket" and labels["route"] == "/orders/{order_id}"]
    assert buckets and buckets[-1] == 2.0  # +Inf holds both


def test_a_body_refused_before_routing_is_counted_under_its_route_and_a_made_up_method_as_other() -> None:
    client = TestClient(create_app(InMemoryBus(), http_edge()), headers=token("alice"))
    assert client.post("/orders", content=b"x" * (http_edge().settings.max_body_bytes + 1)).status_code == 413
    assert client.request("BREW", "/orders").status_code == 405

    requests = {(labels["method"], labels["route"], labels["status"])
                for name, labels, _ in samples(client.get("/metrics").text, "http_requests")
                if name == "http_requests_total"}
    assert requests == {("POST", "/orders", "413"), ("other", "/orders", "405")}


@pytest.mark.parametrize("service", [*APIS, "monolith"])
def test_each_api_and_the_monolith_count_their_own_requests(service: str) -> None:
    edge = http_edge()
    app = (create_monolith_app(InMemoryBus(), edge) if service == "monolith"
           else APIS[service].create_app(InMemoryBus(), edge))
    client = TestClient(app)
    assert client.get("/health/live").status_code == 200

    text = client.get("/metrics").text

    assert [(labels["route"], value) for name, labels, value in samples(text, "http_requests")
            if name == "http_requests_total"] == [("/health/live", 1.0)]
