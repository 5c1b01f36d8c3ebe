"""The one place that chooses adapters from settings and wires the services to them.

Every process of the shop is assembled here: `bootstrap` (what any process needs to store and publish: stores,
broker, dead letters, event log), `bootstrap_worker`, `bootstrap_api` and `bootstrap_monolith`. Nothing else in the
code base branches on "which broker" or "which store"; services say what they need (`ServiceSpec.dependencies`) and
this module decides which adapter provides it, as cosmicpython's bootstrap does.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
import sqlalchemy.exc
from celery import Celery
from fastapi import FastAPI
from kombu import Queue
from kombu.exceptions import OperationalError

from events.adapters.amqp import broker as amqp
from events.adapters.ed25519.keyring import KeyRing, ServiceTokenKeys
from events.adapters.redis import kombu_channel
from events.adapters.redis import topology as redis_topology
from events.adapters.redis.broker import QueueRelay, RedisBroker
from events.adapters.redis.connection import redis_client
from events.adapters.redis.deadletters import RedisDeadLetters
from events.adapters.redis.eventlog import RedisEventLog
from events.adapters.redis.keys import Keys
from events.adapters.redis.scripts import lua_script
from events.adapters.redis.store import RedisOutbox, RedisStore
from events.adapters.redis.worker import (
    RedisDeliveryCounter,
    RedisWorkerHooks,
    failpoint,
    heartbeat,
    in_flight,
    live_workers,
    metrics_sink,
)
from events.adapters.sql import migrate
from events.adapters.sql.deadletters import SqlDeadLetters
from events.adapters.sql.engine import Engines, engines
from events.adapters.sql.inprocess import SqlInProcessBus
from events.adapters.sql.store import SqlOutbox, SqlStore
from events.bus import ServiceSpec, bind_handlers, build_dependencies
from events.deadletters import CombinedDeadLetters, DeadLetterLimits, DeadLetters, unroutable_record
from events.envelope import Envelope, Publishers
from events.http import TOKEN_ISSUER, Edge, NotReady
from events.messaging import Broker, Outbox, OutboxSender, OutgoingMessage, Periodic
from events.runtime.celery_worker import BrokerHooks, worker_app
from events.runtime.consumer import ServiceRuntime
from events.runtime.observability import MetricsFlusher
from events.settings import BESIDE_THE_BROKER, BusSettings, StoreSettings
from events.unit_of_work import Store, UnitOfWork
from payment_service.gateway import GatewaySettings, RedisLedger, SqliteLedger
from shop.services import APIS, SERVICES
from shop.telemetry import configure_tracing, instrument_app
from user_service.api import AdminSettings, ensure_admin

UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError, OperationalError,
    sqlalchemy.exc.OperationalError, *amqp.BROKER_ERRORS,
)
"""Errors that mean "a store or the broker cannot take this now" (down, or Redis at its memory limit): retried
later, answered 503 at an HTTP edge, never a dead letter."""


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
    """each service's own store (services may share one store object when their URLs are the same)"""
    dead_letters: CombinedDeadLetters
    event_log: RedisEventLog
    outboxes: dict[str, OutboxSender] = field(default_factory=dict)
    """the services whose store commits to an outbox sent after the commit (a SQL database; any store on RabbitMQ)"""
    sql: dict[str, Engines] = field(default_factory=dict)
    """the SQL databases of the services that have one"""
    keys: KeyRing = field(default_factory=lambda: KeyRing({}, {}))
    """the services' public keys, and the private keys of those this process may sign as"""
    publishers: Publishers = field(default_factory=dict)
    """who may publish what (`ServiceSpec.publishes`): a consumer refuses anything else"""
    _closers: list[Callable[[], object]] = field(default_factory=list)
    settles_on_commit = False
    """a command's commit only starts the saga: the API answers 202 and the order settles later"""

    def store(self, service: str) -> Store:
        return self.stores[service]

    def unit_of_work(self, service: str, cause: Envelope | None = None, inbox: str | None = None) -> UnitOfWork:
        return self.stores[service].unit_of_work(service, cause, inbox)

    def commit(self, uow: UnitOfWork) -> None:
        uow.commit()

    def publish(self, *envelopes: Envelope) -> None:
        """Publish outside any handler (sample events), through the producer's store so that the outbox rules apply;
        signed as the producer, so this process must hold its private key."""
        for envelope in envelopes:
            uow = self.stores[envelope.producer].unit_of_work(envelope.producer)
            uow.outbox.append(envelope)
            uow.commit()

    def fresh_count(self, service: str, event_id: str) -> None:
        RedisDeliveryCounter(self.redis, self.settings).forget(service, event_id)

    def queues(self) -> dict[str, dict[str, Any]]:
        """Per consuming service: messages waiting, in flight, unsettled queue copies, relayed, retried, and events
        its store committed that the broker has not taken yet (`shop status`)."""
        consumers = [spec for spec in SERVICES.values() if spec.handlers]
        waiting = amqp.waiting_counts(self.settings, consumers) if broker_is_amqp(self.settings) else None
        return {
            spec.name: {
                "waiting": waiting[spec.name] if waiting is not None else int(self.redis.llen(spec.queue)),
                "in_flight": "-" if waiting is not None else in_flight(self.redis, spec.name),
                "unsettled": int(self.redis.hlen(Keys.outbox(spec.queue))),
                "relayed": int(self.redis.get(Keys.relayed(spec.queue)) or 0),
                "retries": int(self.redis.get(Keys.retries(spec.name)) or 0),
                "outbox": self.outboxes[spec.name].outbox.pending() if spec.name in self.outboxes else "-",
                "workers": live_workers(self.redis, spec.name),
            }
            for spec in consumers
        }

    def outbox_pending(self) -> int | None:
        """Committed events not yet taken by the broker, over every store with an outbox; None when every commit
        publishes by itself (the Redis store beside the Redis broker)."""
        senders = list({id(sender): sender for sender in self.outboxes.values()}.values())
        return sum(sender.outbox.pending() for sender in senders) if senders else None

    def relay(self, service: str) -> Callable[[], int]:
        """One pass of the relay of `service`'s store: send what a crash left in its outbox, forget old inbox rows,
        vacuum and analyze where no autovacuum does (`SqlStore.housekeeping`)."""
        sender, store = self.outboxes.get(service), self.stores[service]

        def sweep() -> int:
            sent = sender.sweep() if sender is not None else 0
            if isinstance(store, SqlStore):
                store.housekeeping(time.time() - self.settings.inbox_ttl)
            return sent

        return sweep

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def bootstrap(settings: BusSettings | None = None, stores: StoreSettings | None = None,
              single_connection: bool = False, services: Collection[str] | None = None) -> Wiring:
    """Stores, broker and dead letters as `settings` and `StoreSettings` say; SQL databases are migrated to the
    current schema first (safe from several processes at once: see events/adapters/sql/migrate.py).
    `services`: the only services whose stores this process opens (a service's worker or API: its own, so it holds
    no connection to another service's database); None: every service's (the tools that look across them).
    `single_connection`: Redis clients of one connection each (`redis_client`), and SQL stores whose threads keep a
    connection each (`driver.Connections`), for a process that uses them from one thread at a time, mostly (a solo
    worker)."""
    settings = settings or BusSettings()
    client = redis_client(settings, single_connection=single_connection)
    broker_dead_letters = RedisDeadLetters(client, limits(settings))
    event_log = RedisEventLog(client)
    closers: list[Callable[[], object]] = [client.close]
    broker: Broker
    redis_broker: RedisBroker | None = None
    if broker_is_amqp(settings):
        broker = amqp.AmqpBroker(settings, SERVICES.values())
        closers.append(broker.close)
    else:
        broker = redis_broker = RedisBroker(client, settings)
        closers.append(redis_broker.close)

    def sender(outbox: Outbox) -> OutboxSender:
        """Events are logged by the Redis broker as it queues them; on RabbitMQ, once it has them."""
        return OutboxSender(outbox, broker, lambda message: broker_dead_letters.store(unroutable_record(message)),
                            after_send=None if redis_broker is not None else event_log.append)

    keys = KeyRing.load(settings.keys_path)
    wiring = Wiring(settings, client, broker, {}, CombinedDeadLetters({}, broker_dead_letters), event_log,
                    keys=keys, publishers=publishers(), _closers=closers)
    built: dict[str, tuple[Store, DeadLetters, OutboxSender | None, Engines | None]] = {}
    urls = stores or StoreSettings()
    for name in SERVICES if services is None else services:
        url = urls.url_for(name, settings.var_dir)
        if url not in built:
            if url == BESIDE_THE_BROKER or (url == settings.redis_url and redis_broker is not None):
                if redis_broker is not None:
                    beside = RedisStore(client, settings, keys, broker=redis_broker)
                    built[url] = beside, broker_dead_letters, None, None
                else:  # on RabbitMQ the Redis store commits to an outbox, as any store does
                    relay = sender(RedisOutbox(client, settings))
                    outboxed = RedisStore(client, settings, keys, on_commit=relay.send)
                    built[url] = outboxed, broker_dead_letters, relay, None
            elif url.startswith(("redis://", "rediss://")):
                own = redis_client(settings, url, single_connection=single_connection)
                closers.append(own.close)
                relay = sender(RedisOutbox(own, settings))
                built[url] = (RedisStore(own, settings, keys, on_commit=relay.send),
                              RedisDeadLetters(own, limits(settings)), relay, None)
            else:
                database = engines(url)
                migrate.upgrade(database)
                closers.append(database.dispose)
                rows = SqlOutbox(database, settings)
                closers.append(rows.flush)  # closers run last first: before the engine goes
                relay = sender(rows)
                built[url] = (SqlStore(database, settings, keys, on_commit=relay.hand_over, settled=rows,
                                       held=single_connection),
                              SqlDeadLetters(database, limits(settings)), relay, database)
        store, dead, relay_of, database_of = built[url]
        wiring.stores[name] = store
        wiring.dead_letters.owners[name] = dead
        if relay_of is not None:
            wiring.outboxes[name] = relay_of
        if database_of is not None:
            wiring.sql[name] = database_of
    wiring.dead_letters = CombinedDeadLetters(wiring.dead_letters.owners, broker_dead_letters)
    return wiring


def limits(settings: BusSettings) -> DeadLetterLimits:
    return DeadLetterLimits(body_bytes=settings.dead_letter_body_bytes, per_service=settings.dead_letter_cap)


def publishers() -> Publishers:
    """event type -> the services that declare it in `ServiceSpec.publishes`."""
    allowed: dict[str, set[str]] = {}
    for spec in SERVICES.values():
        for model in spec.publishes:
            allowed.setdefault(model.type_name, set()).add(spec.name)
    return {type_name: frozenset(names) for type_name, names in allowed.items()}


class MissingKeys(RuntimeError):
    """A process would start without the keys it needs: refuse, with what to do about it."""


def require_keys(wiring: Wiring, signing_as: Iterable[str]) -> None:
    missing = wiring.keys.missing(SERVICES, signing_as)
    if missing:
        raise MissingKeys(
            f"missing in {wiring.settings.keys_path}: {', '.join(missing)}. Each service signs its events with its own "
            "key: run `shop keys generate` (or `shop demo`, which makes throwaway ones), or point SHOP_KEYS_DIR at "
            "your deployment's keys."
        )


def resources(wiring: Wiring) -> dict[str, Any]:
    """What services may ask for in their `dependencies`: the simulated gateway's books live in the broker-side
    Redis (the gateway is an outside system, not one of the services' stores)."""
    return {"ledger": RedisLedger(wiring.redis, lua_script)}


@dataclass
class Worker:
    app: Celery
    queue: Queue
    node: str
    runtime: ServiceRuntime
    wiring: Wiring
    background: list[Periodic | MetricsFlusher]

    def start_background(self) -> None:
        """The relay (Redis: unsettled queue messages; RabbitMQ: the outbox), metrics and heartbeat threads."""
        for thread in self.background:
            thread.start()

    def stop_background(self) -> None:
        """Stop the threads (the metrics flusher hands over the counts of the last interval) and the heartbeat: a
        worker that stops cleanly leaves `shop status` at once."""
        for thread in self.background:
            thread.stop()
        store = self.wiring.stores.get(self.runtime.spec.name)
        if isinstance(store, RedisStore) and store.pipelined is not None:
            store.pipelined.close()  # the replies of the last commits: a refused one's message goes back now
        with contextlib.suppress(*UNAVAILABLE):  # it expires by itself
            self.wiring.redis.delete(Keys.worker(self.runtime.spec.name, self.node))


def bootstrap_worker(service: str, settings: BusSettings | None = None, node: str | None = None) -> Worker:
    """A celery worker for one service's queue, with its relay and metrics threads (not started)."""
    settings = settings or BusSettings()
    spec = SERVICES[service]
    configure_tracing(service)
    node = node or f"{spec.name}@{socket.gethostname()}"
    declare_topology(settings, [spec])
    wiring = bootstrap(settings, single_connection=settings.worker_pool == "solo", services=[service])
    require_keys(wiring, [service])
    fault = failpoint(wiring.redis, spec.name, settings) if settings.fault_injection else None
    if fault is not None:
        inject_store_faults(wiring, service, fault)
    runtime = ServiceRuntime(
        spec, bind_handlers(spec, build_dependencies(spec, resources(wiring))), wiring.store(service),
        wiring.dead_letters.of(service), RedisDeliveryCounter(wiring.redis, settings), settings,
        keys=wiring.keys, publishers=wiring.publishers, unavailable=UNAVAILABLE,
        **({"failpoint": fault} if fault else {}),
    )
    hooks: BrokerHooks
    background: list[Periodic | MetricsFlusher] = []
    store_relay = wiring.relay(service)
    if broker_is_amqp(settings):
        hooks = amqp.AmqpWorkerHooks(settings)
        amqp_broker = wiring.broker
        assert isinstance(amqp_broker, amqp.AmqpBroker)

        def relay() -> None:
            store_relay()
            amqp_broker.move_dead_letters(spec, wiring.dead_letters.of(service).add)

        background.append(Periodic(f"relay-{service}", settings.relay_interval, relay, UNAVAILABLE))
    else:
        hooks = RedisWorkerHooks(spec, settings, wiring.redis, node)
        queue_relay = QueueRelay(spec.queue, wiring.redis, settings)

        def relay_both() -> None:
            queue_relay.sweep()
            store_relay()

        background.append(Periodic(f"relay-{service}", settings.relay_interval, relay_both, UNAVAILABLE))
        if fault:
            kombu_channel.after_take = lambda queue, item: fault("after_take", queue, hashlib.sha1(item).hexdigest())
        store = wiring.stores.get(service)
        if (settings.pipelined_commits and settings.worker_pool == "solo" and isinstance(store, RedisStore)
                and store.broker is not None and store.on_commit is None):
            hooks.before_take = store.pipeline_commits().drain
    app, queue = worker_app(runtime, hooks, settings)
    background.append(MetricsFlusher(runtime.observer.metrics, metrics_sink(wiring.redis, service),
                                     settings.metrics_interval, errors=UNAVAILABLE))
    background.append(Periodic(f"heartbeat-{service}", settings.heartbeat_interval, at_start=True, errors=UNAVAILABLE,
                               step=heartbeat(wiring.redis, service, node, 3 * settings.heartbeat_interval)))
    return Worker(app, queue, node, runtime, wiring, background)


def inject_store_faults(wiring: Wiring, service: str, fault: Callable[[str, str, str], None]) -> None:
    """Fault injection (the crash tests): a failpoint between a store's commit and the hand-over of its events to the
    broker (`before_publish:<EventType>`), and one in the relay between the broker taking them and their outbox entries
    being settled (`after_send:outbox`)."""
    sender, store = wiring.outboxes.get(service), wiring.stores[service]
    if sender is None or not isinstance(store, SqlStore | RedisStore):
        return
    sender.failpoint = fault

    def failing_before(messages: list[OutgoingMessage]) -> None:
        for message in messages:
            fault("before_publish", message.type, message.id)

    if isinstance(store, SqlStore):
        def hand_over(messages: list[OutgoingMessage], acknowledge: object | None) -> bool:
            failing_before(messages)
            return sender.hand_over(messages, acknowledge)

        store.on_commit = hand_over
    else:
        def send(messages: list[OutgoingMessage]) -> object:
            failing_before(messages)
            return sender.send(messages)

        store.on_commit = send


def bootstrap_api(service: str, settings: BusSettings | None = None) -> FastAPI:
    """A service's HTTP app over its store, with the relay of its store's outbox (an API commits events too: the
    user service has no worker to relay them)."""
    settings = settings or BusSettings()
    configure_tracing(service)
    declare_topology(settings)
    wiring = bootstrap(settings, services=[service])
    require_keys(wiring, [service])
    Periodic(f"relay-{service}", settings.relay_interval, wiring.relay(service), UNAVAILABLE).start()
    edge = edge_of(wiring.keys, readiness(wiring, service))
    if service == "user_service":
        admin = AdminSettings()
        if admin.email and admin.password:
            ensure_admin(wiring, admin.email, admin.password)
    return instrument_app(APIS[service].create_app(wiring, edge))


def edge_of(keys: KeyRing, ready: Callable[[], None] | None = None) -> Edge:
    """The HTTP edge's settings: access tokens signed by the user service's key, 503 for an unavailable store, and
    what /health/ready checks (`readiness`)."""
    return Edge(ServiceTokenKeys(keys, TOKEN_ISSUER), UNAVAILABLE, ready=ready)


def answers(store: Store) -> Callable[[], object]:
    """The cheapest round trip to a store: `SELECT 1` on a SQL database, PING on Redis."""
    if isinstance(store, SqlStore):
        def select_one() -> object:
            with store.engines.read.connect() as connection:
                return connection.execute(sqlalchemy.text("SELECT 1")).scalar()

        return select_one
    if isinstance(store, RedisStore):
        return store.redis.ping
    raise TypeError(f"no readiness check for a {type(store).__name__}")


def ready_when(checks: dict[str, Callable[[], object]]) -> Callable[[], None]:
    """An edge's `ready`: every check in turn; the first that cannot reach its server raises NotReady naming it (by
    role, never by URL: an answer must not show a password)."""

    def ready() -> None:
        for what, check in checks.items():
            try:
                check()
            except UNAVAILABLE as exc:
                raise NotReady(f"{what} does not answer ({type(exc).__name__})") from exc

    return ready


def readiness(wiring: Wiring, service: str) -> Callable[[], None]:
    """/health/ready of `service`'s API: its own store, the broker-side Redis (the broker itself, or the event log and
    dead letters beside RabbitMQ) and, when RabbitMQ is the broker, a fresh connection to it."""
    store = wiring.stores[service]
    checks: dict[str, Callable[[], object]] = {}
    if not (isinstance(store, RedisStore) and store.redis is wiring.redis):
        checks[f"the store of {service}"] = answers(store)
    checks["Redis"] = wiring.redis.ping
    if broker_is_amqp(wiring.settings):
        def connect() -> None:
            with amqp.broker_connection(wiring.settings) as connection:
                connection.connect()

        checks["RabbitMQ"] = connect
    return ready_when(checks)


def bootstrap_monolith(settings: BusSettings | None = None, dispatch: str = "sync") -> SqlInProcessBus:
    """Every service in one process over ONE database (`SHOP_MONOLITH_DATABASE_URL`, a SQLite file by default), the
    gateway's books in a file of their own, and the workers' retry policy (the same settings), so a transient failure
    is retried alike in both architectures."""
    settings = settings or BusSettings()
    database = engines(StoreSettings().monolith_url(settings.var_dir))
    migrate.upgrade(database)
    bus = SqlInProcessBus(
        SqlStore(database, settings, outbox=False), SqlDeadLetters(database, limits(settings)), settings,
        dispatch=dispatch,
        external={model.type_name for spec in SERVICES.values() for model in spec.calls_out},
    )
    ledger = SqliteLedger(GatewaySettings().ledger_path or settings.var_dir / "db" / "gateway.sqlite3")
    for spec in SERVICES.values():
        bus.subscribe(spec, build_dependencies(spec, {"ledger": ledger}))
    return bus
