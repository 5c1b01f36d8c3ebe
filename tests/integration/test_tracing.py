"""OpenTelemetry across the queues: one order placed over HTTP is ONE trace whose spans cover every hop of its saga.

The SDK's in-memory exporter collects the spans, so the services run in this process: the order API through the
FastAPI instrumentation, and each service's runtime fed from its real Redis queue (messages rendered, routed and
stored exactly as the workers get them; the task's headers read through celery's own request context).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.app.task import Context
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from events import tracing
from events.runtime.celery_worker import trace_headers
from events.runtime.consumer import Delivery, ServiceRuntime
from order_service.api import create_app as order_app
from shop.bootstrap import Wiring, bootstrap_worker, declare_topology
from shop.services import CONSUMERS, SERVICES
from shop.telemetry import configure_tracing, instrument_app
from shop.trace import journey
from tests.support.builders import http_edge, stock_product, token

EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test only (the global tracer provider can be set once per process: set it once)."""
    if not getattr(EXPORTER, "installed", False):
        assert configure_tracing("tests", SimpleSpanProcessor(EXPORTER))
        EXPORTER.installed = True  # type: ignore[attr-defined]
    tracing.enable()
    EXPORTER.clear()
    yield EXPORTER
    tracing.enable(False)


def pump(runtimes: dict[str, ServiceRuntime], client: redis.Redis, seconds: float = 30.0) -> list[str]:
    """Hand every queued message to its service's runtime until the queues are empty; returns the outcomes."""
    outcomes: list[str] = []
    deadline = time.monotonic() + seconds
    busy = True
    while busy and time.monotonic() < deadline:
        busy = False
        for service, runtime in runtimes.items():
            raw = client.rpop(SERVICES[service].queue)  # kombu pushes left and takes from the right
            if raw is None:
                continue
            busy = True
            payload = json.loads(raw)
            body = payload["body"]
            if payload["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            _, kwargs, _ = json.loads(body)
            request = Context(payload["headers"])  # what celery builds a task's request from
            decision = runtime.handle(Delivery(kwargs["envelope"], kwargs["signature"], trace=trace_headers(request)))
            outcomes.append(f"{service}:{decision.outcome}")
    return outcomes


def tree(spans: list[ReadableSpan]) -> str:
    """The spans as an indented tree, parents first (the closing note of the tracing issue shows one)."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda each: each.start_time or 0):
            service = span.attributes.get("messaging.consumer.group.name") if span.attributes else None
            lines.append(f"{'  ' * depth}{span.name} [{span.kind.name.lower()}]"
                         + (f" in {service}" if service else ""))
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


@pytest.mark.timeout(120)
def test_one_order_over_http_is_one_trace_across_every_service_in_causal_order(
    spans: InMemorySpanExporter, wiring: Wiring, redis_client: redis.Redis
) -> None:
    declare_topology(wiring.settings)
    stock_product(wiring, price="10.00")
    workers = [bootstrap_worker(service) for service in CONSUMERS]
    runtimes = {worker.runtime.spec.name: worker.runtime for worker in workers}
    try:
        http = TestClient(instrument_app(order_app(wiring, http_edge())))
        placed = http.post("/orders", headers=token("alice"), json={
            "customer_id": "alice", "items": [{"product_id": "book", "quantity": 1}], "payment_method": "card"})
        assert placed.status_code == 202, placed.text
        outcomes = pump(runtimes, redis_client)
    finally:
        for worker in workers:
            worker.wiring.close()
    assert outcomes and all(outcome.endswith(":handled") for outcome in outcomes), outcomes

    finished = list(spans.get_finished_spans())
    print(tree(finished))
    assert len({span.context.trace_id for span in finished}) == 1, "one order, one trace"
    by_id = {span.context.span_id: span for span in finished}
    roots = [span for span in finished if span.parent is None]
    assert [root.kind for root in roots] == [SpanKind.SERVER], "the HTTP request is the one root"
    order_id = placed.json()["id"]

    consumed = [span for span in finished if span.kind is SpanKind.CONSUMER]
    hops = {(span.attributes["messaging.consumer.group.name"], span.attributes["shop.event.type"])
            for span in consumed if span.attributes}
    assert {("product_service", "OrderCreated"), ("payment_service", "StockReserved"),
            ("order_service", "PaymentProcessed"), ("notification_service", "OrderConfirmed"),
            ("order_service", "NotificationSent")} <= hops
    for span in consumed:
        assert span.parent is not None
        producer: Any = by_id[span.parent.span_id]
        assert producer.kind is SpanKind.PRODUCER
        assert producer.attributes["messaging.message.id"] == span.attributes["messaging.message.id"]
        assert producer.start_time <= span.start_time
        assert span.attributes["shop.order_id"] == order_id and span.attributes["shop.outcome"] == "handled"

    # The chain from the last hop back to the request passes through every step of the saga, in causal order.
    last = next(span for span in consumed if span.attributes and span.attributes["shop.event.type"]
                == "NotificationSent")
    chain: list[str] = []
    step: Any = last
    while step is not None:
        if step.kind is SpanKind.CONSUMER:
            chain.append(step.attributes["shop.event.type"])
        step = by_id.get(step.parent.span_id) if step.parent else None
    assert chain[::-1] == ["OrderCreated", "StockReserved", "PaymentProcessed", "OrderConfirmed", "NotificationSent"]
    trace_id = format(last.context.trace_id, "032x")
    assert {hop.trace_id for hop in journey(wiring.event_log, order_id)} == {trace_id}, \
        "the event log keeps the trace id of every event, so `shop trace` and a tracing UI meet"


def test_without_tracing_a_message_carries_no_trace_headers(wiring: Wiring) -> None:
    assert not tracing.enabled()
    stock_product(wiring, price="10.00")
    http = TestClient(order_app(wiring, http_edge()))
    placed = http.post("/orders", headers=token("alice"), json={
        "customer_id": "alice", "items": [{"product_id": "book", "quantity": 1}], "payment_method": "card"})
    assert placed.status_code == 202
    assert wiring.event_log.traced(placed.json()["id"])[0][1] is None
