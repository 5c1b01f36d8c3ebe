"""What a worker tells about each message it handles: one structured log line and a few counters.

The outcome (handled, duplicate, dead-lettered, retried, requeued) is only known inside `ServiceRuntime.handle`, so
that is where `MessageObserver.record` is called, once per message whatever its fate; celery's task signals would
not see a message dead-lettered before it became a task, nor tell a duplicate from a handled one.

This runs on the hot path, so it stays cheap:

* The log line goes through the stdlib `logging` (the JSON formatter is configured by the process, `shop/worker.py`);
  the envelope's ids are read only when the `shop.messages` logger is enabled.
* Metrics: counters in process, handed to a sink (one Redis hash per service, events/adapters/redis/worker.py) by a
  background thread (`MetricsFlusher`) every second or so. Per message that is a few dict increments under a lock,
  no I/O. The totals add up across every worker of a service and survive a worker restart, so one endpoint
  (`shop metrics`) serves them all (see shop/metrics.py for why). The price: a worker killed with SIGKILL loses at
  most one flush interval of counts, which is acceptable for metrics (never for events).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from typing import Any

from events.envelope import Envelope

MetricsSink = Callable[[Counter[str], float], None]
"""Adds one flush (counts by field, seconds) to the service's totals; raises when the totals cannot be reached."""

MESSAGE_LOG = logging.getLogger("shop.messages")
log = logging.getLogger(__name__)

OUTCOMES = ("handled", "duplicate", "dead-lettered", "retried", "requeued", "error")
"""`error`: an exception the runtime did not expect escaped `handle` (celery then logs it; the message stays in the
worker's taken list until the worker reconnects)."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds in seconds (Prometheus' `le`); a handler is a few Redis round trips, a slow gateway adds seconds."""


class ServiceMetrics:
    """One service's counters in this process since the last flush. Buckets are kept non-cumulative (one increment
    per message); the reader accumulates them into Prometheus' cumulative `le` buckets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._seconds = 0.0

    def observe(self, outcome: str, seconds: float) -> None:
        bucket = bisect_left(LATENCY_BUCKETS, seconds)
        bucket_field = f"le:{LATENCY_BUCKETS[bucket]}" if bucket < len(LATENCY_BUCKETS) else "le:+Inf"
        with self._lock:
            self._counts[f"outcome:{outcome}"] += 1
            self._counts[bucket_field] += 1
            self._seconds += seconds

    def take(self) -> tuple[Counter[str], float]:
        """What was counted since the last call, and reset."""
        with self._lock:
            counts, seconds = self._counts, self._seconds
            self._counts, self._seconds = Counter(), 0.0
        return counts, seconds

    def give_back(self, counts: Counter[str], seconds: float) -> None:
        """A flush failed (Redis away): keep the counts for the next one."""
        with self._lock:
            self._counts.update(counts)
            self._seconds += seconds

    def flush(self, sink: MetricsSink) -> int:
        """Everything counted since the last flush, in one call to the sink; returns how many fields moved. When the
        sink fails the counts are kept for the next flush."""
        counts, seconds = self.take()
        if not counts:
            return 0
        try:
            sink(counts, seconds)
        except Exception:
            self.give_back(counts, seconds)
            raise
        return len(counts)


class MetricsFlusher:
    """Hands a worker's counters to its sink every `interval` seconds, on a daemon thread."""

    def __init__(self, metrics: ServiceMetrics, sink: MetricsSink, interval: float = 1.0,
                 errors: tuple[type[BaseException], ...] = (OSError,)) -> None:
        self.metrics, self.sink, self.interval, self.errors = metrics, sink, interval, errors
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.metrics.flush(self.sink)
            except self.errors as exc:
                log.warning("metrics flush failed (%s); kept for the next one", exc)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="metrics-flusher", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop and flush what is left (a clean shutdown loses nothing)."""
        self._stop.set()
        with contextlib.suppress(*self.errors):
            self.metrics.flush(self.sink)


class MessageObserver:
    """Logs and counts one message's handling. Never raises: telemetry must not change a message's fate."""

    def __init__(self, service: str, metrics: ServiceMetrics | None = None) -> None:
        self.service = service
        self.metrics = metrics or ServiceMetrics()

    def record(self, raw: Any, outcome: str, started: float, envelope: Envelope | None = None,
               ended: float | None = None) -> None:
        """`envelope`: the verified envelope when the message got that far; otherwise the ids are read from `raw`
        as best they can be (a rejected message is logged too). `ended`: when handling ended, if not now."""
        seconds = (time.perf_counter() if ended is None else ended) - started
        try:
            self.metrics.observe(outcome, seconds)
            if MESSAGE_LOG.isEnabledFor(logging.INFO):
                ids = _ids_of(envelope) if envelope is not None else _envelope_ids(raw)
                MESSAGE_LOG.info(
                    "%s %s", outcome, ids["event_type"] or "?",
                    extra={"service": self.service, "outcome": outcome, "duration_ms": round(seconds * 1000, 3), **ids},
                )
        except Exception:
            log.exception("telemetry failed for a %s message", outcome)


def _ids_of(envelope: Envelope) -> dict[str, Any]:
    return {
        "event_type": envelope.type,
        "event_id": str(envelope.event_id),
        "correlation_id": str(envelope.correlation_id),
        "causation_id": str(envelope.causation_id) if envelope.causation_id else None,
    }


def _envelope_ids(raw: Any) -> dict[str, Any]:
    """The ids that let a log line be joined with the event log and `shop trace`; None where the message has none
    (garbage is dead-lettered and logged too)."""
    try:
        envelope = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict):
        envelope = {}
    return {
        "event_type": envelope.get("type"),
        "event_id": envelope.get("event_id"),
        "correlation_id": envelope.get("correlation_id"),
        "causation_id": envelope.get("causation_id"),
    }

