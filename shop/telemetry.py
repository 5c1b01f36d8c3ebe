"""OpenTelemetry for a shop process, from the standard variables, off unless asked for.

`OTEL_TRACES_EXPORTER=otlp` (OTLP over HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. the compose collector) or `console`
switches tracing on; unset or `none` leaves the API's no-op tracer in place, and events/tracing.py then adds nothing to
a message. `OTEL_SERVICE_NAME` overrides the service name a process reports (default: its shop service, or "shop").
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from events import tracing

EXPORTERS = ("otlp", "console")


def configure_tracing(service: str, processor: SpanProcessor | None = None) -> bool:
    """Install an SDK tracer provider for this process when `OTEL_TRACES_EXPORTER` asks for one (or a `processor`
    is given, as tests do with the SDK's in-memory exporter). Returns whether tracing is on."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if processor is None:
        if exporter in ("", "none"):
            return False
        if exporter not in EXPORTERS:
            raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: this shop exports {' or '.join(EXPORTERS)}")
        processor = BatchSpanProcessor(_exporter(exporter))
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                                        or service}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    tracing.enable()
    return True


def _exporter(name: str) -> Any:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def instrument_app(app: Any) -> Any:
    """A span per HTTP request (the maintained FastAPI instrumentation), parent of the events the request publishes."""
    if tracing.enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=trace.get_tracer_provider())
    return app


def shutdown() -> None:
    """Flush what the batch processor still holds (a worker's clean stop)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
