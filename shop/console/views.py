"""What the console shows, read through the code the CLI uses: the board is `shop status`'s report (shop/status.py)
plus the handled counters `shop metrics` exports (shop/metrics.py), the journey is `shop trace`'s (shop/trace.py), the
stream tails the event log `shop trace` and `shop replay` read, dead letters are `shop dlq`'s.

`ShopView` is the microservices (`shop up`, `shop demo`): the events come from the Redis event log, stopping a
service's workers goes through `shop up`'s supervisor. `MonolithView` is `shop monolith`: one process, its in-process
queue (the deliveries table) and its one database's dead letters; it keeps no event log to stream.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from events.deadletters import replay as replay_dead_letter
from notification_service.notification_log import read_notifications_from
from shop.services import CONSUMERS, handled_by

HISTORY_SECONDS = 60
NOTIFICATION_BACKLOG_BYTES = 64 * 1024
"""A page that connects is shown the notifications in the log's last 64 KiB, never the whole file."""


class RateHistory:
    """Handled messages per second per service over the last minute, from one sample of the counters per second (a
    bounded deque, whoever watches)."""

    def __init__(self, totals: Callable[[], dict[str, int]], seconds: int = HISTORY_SECONDS) -> None:
        self.totals = totals
        self.samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=seconds + 1)
        self._lock = threading.Lock()

    def sample(self) -> None:
        totals = self.totals()
        with self._lock:
            self.samples.append((time.monotonic(), totals))

    def rates(self) -> dict[str, list[float]]:
        with self._lock:
            samples = list(self.samples)
        rates: dict[str, list[float]] = {}
        for (before, old), (after, new) in itertools.pairwise(samples):
            for service, total in new.items():
                rates.setdefault(service, []).append(
                    round(max(0, total - old.get(service, 0)) / max(after - before, 1e-3), 2))
        return rates


def event_item(stream_id: str, envelope: dict[str, Any], trace_id: str | None,
               consumers: dict[str, list[str]]) -> dict[str, Any]:
    """One event as the page lists it: type, producer -> consumer queues, order id, when."""
    return {"id": stream_id, "event_id": envelope["event_id"], "type": envelope["type"],
            "producer": envelope["producer"], "consumers": consumers.get(envelope["type"], []),
            "order_id": envelope.get("correlation_id"), "causation_id": envelope.get("causation_id"),
            "occurred_at": envelope["occurred_at"], "trace_id": trace_id}


class NotificationTail:
    """Follows the notification log from where a page connected (its last lines first)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size if path.exists() else 0
        self.offset = max(0, size - NOTIFICATION_BACKLOG_BYTES)

    def read(self) -> list[dict[str, Any]]:
        lines, self.offset = read_notifications_from(self.path, self.offset)
        return lines


def dead_letter_items(records: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The newest `limit` dead letters, without the message itself (as `shop dlq list --json`), each with the order
    its message belongs to when the message is a readable envelope."""
    records = sorted(records, key=lambda record: record.get("dead_at", ""), reverse=True)[:limit]
    return [{**{key: value for key, value in record.items() if key != "message"},
             "order_id": _correlation_id(record.get("message"))} for record in records]


def _correlation_id(message: Any) -> str | None:
    try:
        return str(json.loads(message["envelope"])["correlation_id"])
    except (TypeError, KeyError, ValueError):
        return None


class ConsoleView:
    """What both views share: the consuming services (each a row of the board), and `shop dlq list/replay/purge` for
    one dead letter over the view's dead-letter store (`letters`) and its way of putting a message back in its queue
    (`reinject`)."""

    letters: Any

    def services(self) -> list[str]:
        return list(CONSUMERS)

    def reinject(self, record: dict[str, Any]) -> str:
        raise NotImplementedError

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return dead_letter_items(self.letters.list(), limit)

    def replay(self, record_id: str) -> str:
        """KeyError when there is no such dead letter, ValueError when it cannot be replayed."""
        record = self.letters.get(record_id)
        if record is None:
            raise KeyError(record_id)
        return self.reinject(record)

    def purge(self, record_id: str) -> None:
        record = self.letters.get(record_id)
        if record is None or not self.letters.remove(record):
            raise KeyError(record_id)


class ShopView(ConsoleView):
    """The microservices as the console sees them."""

    mode = "microservices"
    streams_events = True

    def __init__(self, wiring: Any, supervisor: Any, notification_log: Path) -> None:
        from shop.metrics import handled_totals

        self.wiring, self.supervisor, self.notification_log = wiring, supervisor, notification_log
        self.letters = wiring.dead_letters
        self.consumers = handled_by()
        self.history = RateHistory(lambda: handled_totals(wiring.redis, CONSUMERS.values()))

    def board(self) -> dict[str, Any]:
        from shop.status import status_of

        report = status_of(self.wiring)
        rates, held = self.history.rates(), set(self.supervisor.held())
        for name, counts in report["services"].items():
            counts["handled_per_second"] = rates.get(name, [])
            counts["stopped"] = name in held
        return {"mode": self.mode, **report}

    def latest_events(self, count: int) -> list[dict[str, Any]]:
        return [event_item(stream_id, envelope, trace, self.consumers)
                for stream_id, envelope, trace in self.wiring.event_log.latest(count)]

    def events_after(self, after: str, count: int, block_ms: int) -> list[dict[str, Any]]:
        return [event_item(stream_id, envelope, trace, self.consumers)
                for stream_id, envelope, trace in self.wiring.event_log.follow(after, count, block_ms)]

    def journey(self, order_id: str) -> dict[str, Any]:
        from shop.trace import journey, journey_document

        return journey_document(order_id, journey(self.wiring.event_log, order_id), self.consumers)

    def reinject(self, record: dict[str, Any]) -> str:
        return replay_dead_letter(record, self.wiring.dead_letters, self.wiring.broker, self.wiring.fresh_count)

    def stop_workers(self, service: str) -> None:
        self.supervisor.stop_child(service)

    def start_workers(self, service: str) -> None:
        self.supervisor.start_child(service)


class MonolithView(ConsoleView):
    """`shop monolith` as the console sees it: one process, its in-process queue (the deliveries waiting per service)
    and its one database's dead letters. "Stop workers" pauses a service's deliveries (they wait, as a stopped worker's
    messages do). It keeps no event log, so there is no stream of events and no journey to draw."""

    mode = "monolith"
    streams_events = False

    def __init__(self, bus: Any) -> None:
        self.bus, self.letters = bus, bus.dead_letters

    def board(self) -> dict[str, Any]:
        waiting, dead = self.bus.backlog_by_service(), self.bus.dead_letters.counts()
        services = {
            name: {"waiting": waiting.get(name, 0), "in_flight": None, "retries": None,
                   "dead_letters": dead.get(name, 0),
                   "workers": [] if name in self.bus.paused else [f"monolith pid {os.getpid()}"],
                   "handled_per_second": [], "stopped": name in self.bus.paused}
            for name in CONSUMERS
        }
        return {"mode": self.mode, "broker": "in process", "services": services,
                "unroutable": {"dead_letters": dead.get("unroutable", 0), "evicted": 0}}

    def latest_events(self, count: int) -> list[dict[str, Any]]:
        return []

    def events_after(self, after: str, count: int, block_ms: int) -> list[dict[str, Any]]:
        return []

    def journey(self, order_id: str) -> dict[str, Any]:
        return {"order_id": order_id, "trace_ids": [], "duration_ms": 0.0, "events": []}

    def reinject(self, record: dict[str, Any]) -> str:
        return str(self.bus.replay(record))

    def stop_workers(self, service: str) -> None:
        self.bus.pause(service)

    def start_workers(self, service: str) -> None:
        self.bus.resume(service)
