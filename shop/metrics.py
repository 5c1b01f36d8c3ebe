"""Every service's metrics in Prometheus' text format, read from Redis: `shop metrics` prints them, `shop metrics
--serve` answers `GET /metrics` for a scraper.

Why counters in Redis behind one endpoint (and not a prometheus_client endpoint per worker, nor Flower): workers are
scaled freely (`docker compose up --scale payment_service=3`) and publish no ports, so per-worker endpoints would need
service discovery, and prometheus_client's multiprocess mode only covers processes sharing one directory on one
host. Flower sees celery tasks, not our outcomes (a duplicate or a dead letter is a successful task to celery), and
needs task events on the hot path. Workers count in process and flush to Redis about once a second
(events/runtime/observability.py), so the hot path does no I/O for metrics; the totals add up over every worker and
survive restarts. Gauges (queue depth, stored dead letters) are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.adapters.redis.deadletters import RedisDeadLetters
from events.adapters.redis.keys import Keys
from events.bus import ServiceSpec
from events.runtime.observability import LATENCY_BUCKETS, OUTCOMES

FAILED = ("retried", "requeued", "dead-lettered", "error")


class MetricsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_METRICS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 9464


class RedisMetricsCollector:
    """A prometheus_client collector over the Redis hashes the workers flush to."""

    def __init__(self, client: redis.Redis, services: Iterable[ServiceSpec]) -> None:
        self.client = client
        self.services = [spec for spec in services if spec.handlers]  # only consumers have a queue and workers

    def collect(self) -> Iterator[Metric]:
        with self.client.pipeline(transaction=False) as pipe:
            for spec in self.services:
                pipe.hgetall(Keys.metrics(spec.name))
                pipe.llen(spec.queue)
            replies = pipe.execute()
        dead_letters = RedisDeadLetters(self.client).counts()
        messages = CounterMetricFamily(
            "shop_messages", "Messages a service's workers finished with, by outcome.", labels=["service", "outcome"])
        failed = CounterMetricFamily(
            "shop_messages_failed", f"Messages not handled on this delivery ({', '.join(FAILED)}).", labels=["service"])
        latency = HistogramMetricFamily(
            "shop_handle_seconds", "Time from a delivery to its outcome, verification and commit included.",
            labels=["service"])
        stored = GaugeMetricFamily("shop_dead_letters", "Dead letters stored now (replay or purge to clear).",
                                   labels=["service"])
        waiting = GaugeMetricFamily("shop_queue_waiting", "Messages waiting in a service's queue.", labels=["queue"])
        for spec, counts, depth in zip(self.services, replies[::2], replies[1::2], strict=True):
            fields = {key.decode(): value.decode() for key, value in counts.items()}
            for outcome in OUTCOMES:
                messages.add_metric([spec.name, outcome], int(fields.get(f"outcome:{outcome}", 0)))
            failed.add_metric([spec.name], sum(int(fields.get(f"outcome:{outcome}", 0)) for outcome in FAILED))
            latency.add_metric([spec.name], _cumulative(fields), float(fields.get("seconds_sum", 0.0)))
            stored.add_metric([spec.name], dead_letters.get(spec.name, 0))
            waiting.add_metric([spec.queue], depth)
        stored.add_metric(["unroutable"], dead_letters.get("unroutable", 0))
        yield from (messages, failed, latency, stored, waiting)


def handled_totals(client: redis.Redis, services: Iterable[ServiceSpec]) -> dict[str, int]:
    """service -> messages its workers handled so far: the `shop_messages{outcome="handled"}` series `shop metrics`
    exports, read through the same collector (the console derives handled/s from it)."""
    return {sample.labels["service"]: int(sample.value)
            for family in RedisMetricsCollector(client, services).collect() if family.name == "shop_messages"
            for sample in family.samples if sample.labels.get("outcome") == "handled"}


def _cumulative(fields: dict[str, Any]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound in (*(str(bound) for bound in LATENCY_BUCKETS), "+Inf"):
        total += int(fields.get(f"le:{bound}", 0))
        buckets.append((bound, total))
    return buckets


def registry_for(client: redis.Redis, services: Iterable[ServiceSpec]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisMetricsCollector(client, services))
    return registry


def render(client: redis.Redis, services: Iterable[ServiceSpec]) -> str:
    return generate_latest(registry_for(client, services)).decode()


def serve(client: redis.Redis, services: Iterable[ServiceSpec], host: str, port: int) -> None:
    """`GET /metrics` (any path, as prometheus_client's own server does) until interrupted."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # a scrape every few seconds is not news
            pass

    with make_server(host, port, make_wsgi_app(registry_for(client, services)), handler_class=Quiet) as server:
        server.serve_forever()
