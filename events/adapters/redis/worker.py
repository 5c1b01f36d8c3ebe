"""The Redis side of a service worker: the consuming transport and its options, what the worker keeps in Redis
besides messages (delivery counters, retry counts, metrics, failpoint marks), and what a reconnection puts back."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from kombu import Queue

from events.adapters.redis import kombu_channel, messages, topology
from events.adapters.redis.connection import kombu_ssl
from events.adapters.redis.keys import Keys
from events.bus import ServiceSpec
from events.settings import BusSettings

log = logging.getLogger(__name__)


class RedisWorkerHooks:
    """`BrokerHooks` for a worker consuming one service's Redis list through the taken-list transport."""

    def __init__(self, spec: ServiceSpec, settings: BusSettings, client: redis.Redis, node: str) -> None:
        self.spec, self.settings, self.redis, self.node = spec, settings, client, node
        self.taken_key = Keys.taken(spec.name, node)
        self._connected_before = False
        self.before_take: Callable[[], None] | None = None
        """run before each take (the store's pipelined commits read their replies): set before `configure`"""

    def configure(self, app: Celery) -> None:
        app.conf.broker_transport = kombu_channel.TRANSPORT
        app.conf.broker_transport_options = {
            **transport_options(self.settings),
            **Keys.unacked(self.spec.name, self.node),
            kombu_channel.TAKEN_KEY_OPTION: self.taken_key,
            kombu_channel.OUTBOX_KEY_OPTION: Keys.OUTBOX_PATTERN,
            kombu_channel.SOLO_POOL_OPTION: self.settings.worker_pool == "solo",
            **({kombu_channel.BEFORE_TAKE_OPTION: self.before_take} if self.before_take else {}),
        }
        if ssl := kombu_ssl(self.settings):
            app.conf.broker_use_ssl = ssl

    def consumer_queue(self, spec: ServiceSpec) -> Queue:
        return topology.consumer_queue(spec)

    def task_name(self, spec: ServiceSpec) -> str:
        return messages.task_name(spec.queue)

    def _tag(self, request: Any) -> str | None:
        return (getattr(request, "properties", None) or {}).get("delivery_tag")

    def acknowledgement(self, request: Any) -> tuple[str, bytes] | None:
        """(taken list, message) when the ack can be folded into the commit: a message this process took (solo pool:
        the task runs in the process whose channel took it)."""
        if self.settings.worker_pool != "solo":
            return None
        item = kombu_channel.taken_message(self._tag(request))
        return None if item is None else (self.taken_key, item)

    def acknowledged(self, request: Any) -> None:
        tag = self._tag(request)
        if tag:
            kombu_channel.acknowledged(tag)

    def settle(self, request: Any) -> None:
        """The acknowledgement of a dead letter or a duplicate, sent now (one round trip; celery's own would come
        after the rest of the batch): a dead-lettered message left in the taken list of a worker that then dies
        would be delivered, and die, again. If Redis cannot take it now, celery's ack follows as usual."""
        taken = self.acknowledgement(request)
        if taken is None:
            return
        taken_key, item = taken
        try:
            kombu_channel.acknowledge(self.redis, taken_key, Keys.OUTBOX_PATTERN, self.spec.queue, item)
        except redis.exceptions.RedisError as exc:
            log.warning("%s: a finished message's acknowledgement waits for celery's (%r)", self.node, exc)
            return
        self.acknowledged(request)

    def on_connected(self) -> None:
        """Return to the queue, marked redelivered, every message this node took and never acknowledged (it died, or
        lost Redis, meanwhile): whatever a previous connection held will never be acknowledged through it.

        Which of them may have killed a worker: all of them when this process did not take them itself (it is the
        node's next process: the one before stopped or died; celery acknowledges a finished message only on the next
        turn of its event loop, so the taken list alone cannot tell the one that was running from the rest of its
        batch); none when this solo process took them and only lost its connection. With a pool of child processes
        any of them may have."""
        kombu_channel.forget_taken()
        solo_pool, inherited = self.settings.worker_pool == "solo", not self._connected_before
        self._connected_before = True
        items = self.redis.lrange(self.taken_key, 0, -1)  # newest first
        for item in items:
            may_have_died = inherited if solo_pool else True
            kombu_channel.put_back(self.redis, self.taken_key, self.spec.queue,
                                   item if isinstance(item, bytes) else item.encode(), may_have_died=may_have_died)
        if items:
            log.warning("%s: put back %d message(s) taken and never acknowledged", self.node, len(items))

    def may_have_died(self, request: Any) -> bool:
        return bool(getattr(request, kombu_channel.MAY_HAVE_DIED_HEADER, True))

    def decode_error_detail(self, message: Any, exc: Exception) -> str:
        headers = message.headers if isinstance(message.headers, dict) else {}
        return str(headers.get(kombu_channel.UNDECODABLE_HEADER) or repr(exc))


def transport_options(settings: BusSettings) -> dict[str, Any]:
    return {
        "visibility_timeout": settings.visibility_timeout,
        # kombu sweeps for abandoned messages every interval x throttle seconds (10 x 10 by default): a consumer
        # without a taken list would wait 100 s past its visibility timeout. Sweep a few times per timeout.
        "unacked_restore_interval": max(1, int(settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
        # One Redis list per queue instead of kombu's four (one per priority step): nothing here uses priorities,
        # and a single list is what lets a worker take a message with one atomic BLMOVE.
        "priority_steps": [0],
    }


class RedisDeliveryCounter:
    """`DeliveryCounter`: Redis has no delivery counter of its own (only a `redelivered` flag)."""

    def __init__(self, client: redis.Redis, settings: BusSettings) -> None:
        self.redis, self.ttl = client, settings.inbox_ttl

    def count(self, service: str, event_id: str) -> int:
        key = Keys.deliveries(service, event_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.ttl)
            count, _ = pipe.execute()
        return int(count)

    def forget(self, service: str, event_id: str) -> None:
        self.redis.delete(Keys.deliveries(service, event_id))

    def count_retry(self, service: str) -> None:
        self.redis.incr(Keys.retries(service))


def metrics_sink(client: redis.Redis, service: str) -> Any:
    """One pipelined round trip per flush into the service's metrics hash (shop/metrics.py reads it)."""

    def add(counts: Counter[str], seconds: float) -> None:
        with client.pipeline(transaction=True) as pipe:
            for field, amount in counts.items():
                pipe.hincrby(Keys.metrics(service), field, amount)
            pipe.hincrbyfloat(Keys.metrics(service), "seconds_sum", seconds)
            pipe.execute()

    return add


def failpoint(client: redis.Redis, service: str, settings: BusSettings) -> Any:
    """Fault injection for the crash tests: with SHOP_FAULT_INJECTION on and SHOP_CRASH_AT=<point>:<subject> (an event
    type, or the queue for `after_take`), the worker process dies at that point, once per `once_per` (an event id,
    a message): the mark survives the crash in Redis."""

    def fire(point: str, subject: str, once_per: str) -> None:
        if settings.crash_at != f"{point}:{subject}":
            return
        if client.set(Keys.failpoint(service, point, once_per), 1, nx=True, ex=3600):
            log.warning("failpoint %s: killing %s on %s", point, service, once_per)
            os._exit(70)

    return fire


def heartbeat(client: redis.Redis, service: str, node: str, ttl: float) -> Callable[[], None]:
    """Renews the worker's key; it expires `ttl` seconds after the worker stops renewing it (died, or lost Redis).
    This replaces celery's remote-control ping for `shop status`: remote control lets anyone with broker access stop
    a consumer, so it is off by default (`SHOP_WORKER_REMOTE_CONTROL`)."""

    def beat() -> None:
        client.set(Keys.worker(service, node), f"{time.time():.3f}", px=int(ttl * 1000))

    return beat


def live_workers(client: redis.Redis, service: str) -> list[str]:
    """The node names of `service`'s workers whose heartbeat has not expired."""
    prefix = Keys.worker(service, "")
    return sorted(key.decode()[len(prefix):] for key in client.scan_iter(match=Keys.worker(service, "*")))


def in_flight(client: redis.Redis, service: str) -> int:
    """Messages of `service` taken by some worker and not yet acknowledged."""
    return sum(int(client.hlen(key)) for key in client.scan_iter(match=Keys.unacked(service, "*")["unacked_key"])) \
        + sum(int(client.llen(key)) for key in client.scan_iter(match=Keys.taken(service, "*")))
