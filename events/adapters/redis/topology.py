"""Who receives what on Redis: one kombu *direct* exchange, `shop.events`; each service owns one durable queue (a
Redis list) bound with the exact event type names it handles (no wildcards: kombu's topic emulation has crossed dots).

`declare` writes those bindings; every process that publishes runs it first, so an event published while a subscriber
is down waits in its queue instead of being dropped (kombu drops a message no binding matches). Publishers route in
Python from the binding table (`Router`, cached briefly) and address each copy to its queue through the default
exchange, so a redelivery or a celery retry returns to that one queue, never to every subscriber again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from kombu import Connection, Exchange, Queue, binding

from events.adapters.redis.connection import kombu_ssl
from events.bus import ServiceSpec
from events.settings import BusSettings

EVENTS_EXCHANGE = Exchange("shop.events", type="direct", durable=True)


def kombu_connection(settings: BusSettings) -> Connection:
    return Connection(settings.redis_url, ssl=kombu_ssl(settings) or False)


def service_queue(spec: ServiceSpec) -> Queue:
    """The queue as declared for routing: durable, bound with each exact event type."""
    return Queue(
        spec.queue,
        bindings=[binding(EVENTS_EXCHANGE, routing_key=type_name) for type_name in spec.event_types],
        durable=True,
    )


def consumer_queue(spec: ServiceSpec) -> Queue:
    """What a worker consumes: the list itself, addressed through the default exchange."""
    return Queue(spec.queue, Exchange(""), routing_key=spec.queue)


def declare(settings: BusSettings, specs: Iterable[ServiceSpec]) -> None:
    """Idempotent: writes the exchange's bindings so publishers can route before any worker ever ran."""
    with kombu_connection(settings) as connection:
        channel = connection.default_channel
        for spec in specs:
            if spec.handlers:
                service_queue(spec).declare(channel=channel)


class Router:
    """Event type -> bound queues, read from kombu's binding table and cached for `topology_refresh` seconds (the
    bindings change only when a service is declared, which `shop up` does before anything is published)."""

    def __init__(self, settings: BusSettings) -> None:
        self._connection = kombu_connection(settings)
        self._ttl = settings.topology_refresh
        self._table: dict[str, list[str]] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()  # the HTTP edge publishes from several threads

    def queues_for(self, event_type: str) -> list[str]:
        if time.monotonic() - self._loaded_at > self._ttl:
            with self._lock:
                if time.monotonic() - self._loaded_at > self._ttl:
                    self._reload()
        return self._table.get(event_type, [])

    def _reload(self) -> None:
        table: dict[str, set[str]] = {}
        for routing_key, _pattern, queue in self._connection.default_channel.get_table(EVENTS_EXCHANGE.name):
            table.setdefault(routing_key, set()).add(queue)
        self._table = {key: sorted(queues) for key, queues in table.items()}
        self._loaded_at = time.monotonic()

    def close(self) -> None:
        self._connection.release()
