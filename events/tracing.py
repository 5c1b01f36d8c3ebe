"""Trace context across the queues (OpenTelemetry, messaging semantic conventions).

Only the OpenTelemetry *API* is used here, as libraries do: until a process configures the SDK (shop/telemetry.py,
from the standard `OTEL_*` variables) nothing is recorded and `publish_headers` returns `{}` without touching the API.
The context travels in the message headers (W3C `traceparent`, `tracestate`), not in the signed envelope: a consumer
that predates tracing ignores a header it does not know, while it would refuse an envelope with an unknown field.

Each published event gets a PRODUCER span, child of whatever is current (an HTTP request, or the handling of the
event that caused it); each handled message a CONSUMER span, child of its producer span. One order placed over HTTP
is then one trace across every service of its saga.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from events.envelope import Envelope

TRACER = trace.get_tracer("shop.events")
_enabled = False


def enable(on: bool = True) -> None:
    """Called once the process has configured an SDK tracer provider."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


def attributes(envelope: Envelope, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": "shop",
        "messaging.operation.type": operation,
        "messaging.destination.name": envelope.type,
        "messaging.message.id": str(envelope.event_id),
        "messaging.message.conversation_id": str(envelope.correlation_id),
        "shop.event.type": envelope.type,
        "shop.event.producer": envelope.producer,
        "shop.order_id": str(envelope.correlation_id),
    }


def publish_headers(envelope: Envelope) -> dict[str, str]:
    """The W3C trace headers for one outgoing event, from a PRODUCER span under the current one."""
    if not _enabled:
        return {}
    with TRACER.start_as_current_span(f"publish {envelope.type}", kind=SpanKind.PRODUCER,
                                      attributes=attributes(envelope, "send")):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier


@contextmanager
def consuming(consumer: str, headers: Mapping[str, str]) -> Iterator[Span | None]:
    """A CONSUMER span for one delivery to `consumer`, child of the producer span in `headers` (None when off)."""
    if not _enabled:
        yield None
        return
    parent = propagate.extract(dict(headers))
    with TRACER.start_as_current_span(f"process {consumer}", context=parent, kind=SpanKind.CONSUMER,
                                      attributes={"messaging.system": "shop", "messaging.operation.type": "process",
                                                  "messaging.consumer.group.name": consumer}) as span:
        yield span


def describe(span: Span | None, envelope: Envelope | None, outcome: str) -> None:
    """Name the consumer span after the event it handled, with the event's attributes and the outcome."""
    if span is None:
        return
    if envelope is not None:
        span.update_name(f"process {envelope.type}")
        span.set_attributes(attributes(envelope, "process"))
    span.set_attribute("shop.outcome", outcome)
    if outcome == "dead-lettered":
        span.set_status(trace.StatusCode.ERROR, "dead-lettered")


def trace_id(headers: Mapping[str, str]) -> str | None:
    """The trace id in a `traceparent` header (version-traceid-spanid-flags), or None."""
    parts = str(headers.get("traceparent", "")).split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
