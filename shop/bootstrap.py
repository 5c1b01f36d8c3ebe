"""The one place that chooses adapters from settings and wires the services to them.

Every process of the shop is assembled here: `bootstrap` (what any process needs to store and publish: stores,
broker, dead letters, event log), `bootstrap_worker`, `bootstrap_api` and `bootstrap_monolith`. Nothing else in the
code base branches on "which broker" or "which store"; services say what they need (`ServiceSpec.dependencies`) and
this module decides which adapter provides it, as cosmicpython's bootstrap does.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from fastapi import FastAPI
from kombu import Queue
from kombu.exceptions import OperationalError

from events.adapters.amqp import broker as amqp
from events.adapters.redis import kombu_channel
from events.adapters.redis import topology as redis_topology
from events.adapters.redis.broker import QueueRelay, RedisBroker
from events.adapters.redis.connection import redis_client
from events.adapters.redis.deadletters import RedisDeadLetters
from events.adapters.redis.eventlog import RedisEventLog
from events.adapters.redis.keys import Keys
from events.adapters.redis.store import RedisOutbox, RedisStore
from events.adapters.redis.worker import (
    RedisDeliveryCounter,
    RedisWorkerHooks,
    failpoint,
    in_flight,
    metrics_sink,
)
from events.bus import ServiceSpec, bind_handlers, build_dependencies
from events.deadletters import CombinedDeadLetters, unroutable_record
from events.envelope import Envelope
from events.memory import DispatchingInMemoryBus
from events.messaging import Broker, OutboxSender, Periodic
from events.runtime.celery_worker import BrokerHooks, make_celery_app, worker_app
from events.runtime.consumer import ServiceRuntime
from events.runtime.observability import MetricsFlusher
from events.settings import BusSettings
from events.unit_of_work import Store, UnitOfWork
from payment_service.gateway import InMemoryLedger, RedisLedger
from shop.services import APIS, SERVICES

UNAVAILABLE: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, OperationalError,
                                                *amqp.BROKER_ERRORS)
"""Errors that mean "a store or the broker cannot be reached now": retried later, never a dead letter."""


def broker_is_amqp(settings: BusSettings) -> bool:
    return settings.broker_url.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}


def declare_topology(settings: BusSettings, specs: Iterable[ServiceSpec] | None = None) -> None:
    """Every service's queue and bindings (idempotent): events published afterwards wait for their subscribers even
    if those have never run."""
    specs = list(SERVICES.values() if specs is None else specs)
    if broker_is_amqp(settings):
        amqp.declare(settings, specs)
    else:
        redis_topology.declare(settings, specs)


@dataclass
class Wiring:
    """What any process needs to store and publish. APIs use it as their bus (`unit_of_work` + `commit`)."""

    settings: BusSettings
    redis: redis.Redis
    """the broker-side Redis: event log, delivery counters, metrics, the gateway's books, unroutable dead letters"""
    broker: Broker
    stores: dict[str, Store]
    dead_letters: CombinedDeadLetters
    event_log: RedisEventLog
    outbox: OutboxSender | None = None
    """set when the stores commit to an outbox that is sent after the commit (RabbitMQ)"""
    _closers: list[Callable[[], object]] = field(default_factory=list)

    def store(self, service: str) -> Store:
        return self.stores[service]

    def unit_of_work(self, service: str, cause: Envelope | None = None, inbox: str | None = None) -> UnitOfWork:
        return self.stores[service].unit_of_work(service, cause, inbox)

    def commit(self, uow: UnitOfWork) -> None:
        uow.commit()

    def publish(self, *envelopes: Envelope, producer: str = "shop-cli") -> None:
        """Publish outside any handler (sample events), through a store so that the outbox rules apply."""
        uow = self.stores.get(producer, next(iter(self.stores.values()))).unit_of_work(producer)
        uow.outbox.extend(envelopes)
        uow.commit()

    def fresh_count(self, service: str, event_id: str) -> None:
        RedisDeliveryCounter(self.redis, self.settings).forget(service, event_id)

    def queues(self) -> dict[str, dict[str, Any]]:
        """Per consuming service: messages waiting, in flight, in its outbox, relayed and retried (`shop status`)."""
        consumers = [spec for spec in SERVICES.values() if spec.handlers]
        waiting = amqp.waiting_counts(self.settings, consumers) if broker_is_amqp(self.settings) else None
        return {
            spec.name: {
                "waiting": waiting[spec.name] if waiting is not None else int(self.redis.llen(spec.queue)),
                "in_flight": "-" if waiting is not None else in_flight(self.redis, spec.name),
                "unsettled": int(self.redis.hlen(Keys.outbox(spec.queue))),
                "relayed": int(self.redis.get(Keys.relayed(spec.queue)) or 0),
                "retries": int(self.redis.get(Keys.retries(spec.name)) or 0),
            }
            for spec in consumers
        }

    def outbox_pending(self) -> int | None:
        """Committed events not yet taken by the broker (RabbitMQ), or None when the commit itself publishes."""
        return RedisOutbox(self.redis, self.settings).pending() if self.outbox is not None else None

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def bootstrap(settings: BusSettings | None = None) -> Wiring:
    settings = settings or BusSettings()
    client = redis_client(settings)
    dead_letters = RedisDeadLetters(client)
    broker: Broker
    closers: list[Callable[[], object]]
    if broker_is_amqp(settings):
        amqp_broker = amqp.AmqpBroker(settings, SERVICES.values())
        outbox = OutboxSender(RedisOutbox(client, settings), amqp_broker,
                              lambda message: dead_letters.store(unroutable_record(message)))
        store = RedisStore(client, settings, on_commit=outbox.send)
        broker, closers = amqp_broker, [client.close, amqp_broker.close]
    else:
        redis_broker = RedisBroker(client, settings)
        store, outbox = RedisStore(client, settings, broker=redis_broker), None
        broker, closers = redis_broker, [client.close, redis_broker.close]
    return Wiring(
        settings=settings, redis=client, broker=broker, stores={name: store for name in SERVICES},
        dead_letters=CombinedDeadLetters({name: dead_letters for name in SERVICES}, dead_letters),
        event_log=RedisEventLog(client), outbox=outbox, _closers=closers,
    )


def resources(wiring: Wiring) -> dict[str, Any]:
    """What services may ask for in their `dependencies`: the simulated gateway's books live in the broker-side
    Redis (the gateway is an outside system, not one of the services' stores)."""
    return {"ledger": RedisLedger(wiring.redis)}


@dataclass
class Worker:
    app: Celery
    queue: Queue
    node: str
    runtime: ServiceRuntime
    wiring: Wiring
    background: list[Periodic | MetricsFlusher]


def bootstrap_worker(service: str, settings: BusSettings | None = None, node: str | None = None) -> Worker:
    """A celery worker for one service's queue, with its relay and metrics threads (not started)."""
    settings = settings or BusSettings()
    spec = SERVICES[service]
    node = node or f"{spec.name}@{socket.gethostname()}"
    declare_topology(settings, [spec])
    wiring = bootstrap(settings)
    fault = failpoint(wiring.redis, spec.name, settings) if settings.fault_injection else None
    runtime = ServiceRuntime(
        spec, bind_handlers(spec, build_dependencies(spec, resources(wiring))), wiring.store(service),
        wiring.dead_letters.of(service), RedisDeliveryCounter(wiring.redis, settings), settings,
        unavailable=UNAVAILABLE, **({"failpoint": fault} if fault else {}),
    )
    hooks: BrokerHooks
    relay_interval = max(0.5, settings.redeliver_after / 4)
    background: list[Periodic | MetricsFlusher] = []
    if broker_is_amqp(settings):
        hooks = amqp.AmqpWorkerHooks(settings)
        amqp_broker, outbox = wiring.broker, wiring.outbox
        assert isinstance(amqp_broker, amqp.AmqpBroker) and outbox is not None

        def relay() -> None:
            outbox.sweep()
            amqp_broker.move_dead_letters(spec, wiring.dead_letters.of(service).add)

        background.append(Periodic(f"relay-{service}", relay_interval, relay, UNAVAILABLE))
    else:
        hooks = RedisWorkerHooks(spec, settings, wiring.redis, node)
        queue_relay = QueueRelay(spec.queue, wiring.redis, settings)
        background.append(Periodic(f"relay-{service}", relay_interval, queue_relay.sweep, UNAVAILABLE))
        if fault:
            kombu_channel.after_take = lambda queue, item: fault("after_take", queue, hashlib.sha1(item).hexdigest())
    app, queue = worker_app(runtime, hooks, settings)
    background.append(MetricsFlusher(runtime.observer.metrics, metrics_sink(wiring.redis, service),
                                     settings.metrics_interval, errors=UNAVAILABLE))
    return Worker(app, queue, node, runtime, wiring, background)


def control_app(settings: BusSettings | None = None) -> Celery:
    """A celery app to ping workers (`shop status`) through the configured broker."""
    settings = settings or BusSettings()
    app = make_celery_app("shop.status", settings)
    if broker_is_amqp(settings):
        amqp.configure_celery(app, settings)
    return app


def bootstrap_api(service: str, settings: BusSettings | None = None) -> FastAPI:
    settings = settings or BusSettings()
    declare_topology(settings)
    return APIS[service].create_app(bootstrap(settings))


def bootstrap_monolith(settings: BusSettings | None = None,
                       wrap: Callable[[ServiceSpec], ServiceSpec] = lambda spec: spec) -> DispatchingInMemoryBus:
    """Every service subscribed to one in-process bus, with in-process resources and the workers' retry policy (the
    same settings), so a transient failure is retried alike in both modes. `wrap` lets the monolith put its fault
    switches around the handlers."""
    settings = settings or BusSettings()
    bus = DispatchingInMemoryBus(max_retries=settings.max_retries, retry_backoff=settings.retry_backoff)
    offered = {"ledger": InMemoryLedger()}
    for spec in SERVICES.values():
        spec = wrap(spec)
        bus.subscribe(spec, build_dependencies(spec, offered))
    return bus
