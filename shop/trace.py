"""An order's journey across the services, read back from the event log (`shop trace <order id>`).

Every published event is in the log, with its correlation id: the order id for everything an order causes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from events.adapters.redis.eventlog import RedisEventLog


@dataclass(frozen=True)
class Hop:
    """One event of the journey, and the event it reacts to (None for the first, or a cause no longer logged)."""

    event_id: str
    type: str
    producer: str
    occurred_at: datetime
    causation_id: str | None
    cause: Hop | None = None
    trace_id: str | None = None
    """the OpenTelemetry trace the event was published in (when tracing was on): what to look up in Jaeger"""

    @property
    def latency_ms(self) -> float | None:
        """Cause -> effect: from the cause being published to this event being published (queueing + handling)."""
        if self.cause is None:
            return None
        return (self.occurred_at - self.cause.occurred_at).total_seconds() * 1000


def journey(event_log: RedisEventLog, correlation_id: str) -> list[Hop]:
    """The order's events in the order they happened, each linked to its cause (looked up by id, not by position:
    clocks of two hosts may disagree by a few milliseconds)."""
    traced = event_log.traced(correlation_id)
    envelopes = {envelope["event_id"]: envelope for envelope, _ in traced}
    traces = {envelope["event_id"]: trace_id for envelope, trace_id in traced}
    hops: dict[str, Hop] = {}

    def hop(event_id: str) -> Hop:
        if event_id not in hops:
            envelope = envelopes[event_id]
            causation_id = envelope.get("causation_id")
            hops[event_id] = Hop(
                event_id=event_id,
                type=envelope["type"],
                producer=envelope["producer"],
                occurred_at=datetime.fromisoformat(envelope["occurred_at"]),
                causation_id=causation_id,
                cause=hop(causation_id) if causation_id is not None and causation_id in envelopes else None,
                trace_id=traces.get(event_id),
            )
        return hops[event_id]

    return sorted((hop(event_id) for event_id in envelopes), key=lambda each: each.occurred_at)


def journey_document(
    correlation_id: str, hops: Sequence[Hop], handled_by: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """`shop trace --json`: the journey as one JSON document, every id whole. Per event: when it was published (also as
    milliseconds since the first event), its cause (`cause_type` null when the cause is not in the log), the
    milliseconds from its cause to it, and the services that handle its type."""
    start = hops[0].occurred_at if hops else None

    def since_start(hop: Hop) -> float:
        return (hop.occurred_at - start).total_seconds() * 1000 if start is not None else 0.0

    return {
        "order_id": correlation_id,
        "trace_ids": sorted({hop.trace_id for hop in hops if hop.trace_id}),
        "duration_ms": since_start(hops[-1]) if hops else 0.0,
        "events": [
            {"event_id": hop.event_id, "type": hop.type, "producer": hop.producer,
             "occurred_at": hop.occurred_at.isoformat(), "offset_ms": since_start(hop),
             "causation_id": hop.causation_id, "cause_type": hop.cause.type if hop.cause else None,
             "hop_ms": hop.latency_ms, "handled_by": list(handled_by.get(hop.type, ()))}
            for hop in hops
        ],
    }
