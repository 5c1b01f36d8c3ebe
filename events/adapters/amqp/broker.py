"""RabbitMQ as the broker (BROKER_URL=amqp://...), through kombu and celery's amqp transport.

What differs from Redis, and why:

* The broker routes. A durable topic exchange `<prefix>shop.events`; one durable queue per service, bound with the
  exact event type names it handles (no wildcards: the same rule as on Redis). Messages are persistent. A redelivery
  (a reject with requeue, the connection of a worker that died) goes back to the queue it came from, never through
  the exchange again. Celery retries would go through the delivery's exchange and routing key (one copy per
  subscriber): the worker sends them to its own queue instead.
* One task name. The exchange copies one message into each bound queue, so the message cannot name a per-queue task
  as the Redis messages do; every service registers `shop.handle_event`. A message in the wrong queue still ends as a
  dead letter ("no handler").
* Native dead-lettering. Each queue has `x-dead-letter-exchange` = `<prefix>shop.deadletter` and its own
  `<queue>.dead`: a message rejected without requeue (or, if limits are added, expired or over length) is kept by
  RabbitMQ until the worker's relay moves it into the service's dead-letter store with the broker's reason (`x-death`),
  so `shop dlq` lists and replays it like any other dead letter.
* No shared transaction with any store: a store commits its outgoing events as outbox entries, and `AmqpBroker.send`
  publishes them as persistent, mandatory messages with publisher confirms (events/messaging.py, `OutboxSender`).
  `mandatory` makes RabbitMQ return a message no queue is bound to (it arrives before the confirm): `send` reports it
  unroutable. An alternate exchange would keep such messages inside RabbitMQ, away from `shop dlq`, so none is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from amqp.exceptions import AMQPError, MessageNacked
from celery import Celery
from kombu import Connection, Exchange, Message, Producer, Queue, binding
from kombu.exceptions import KombuError

from events.bus import ServiceSpec
from events.messaging import OutgoingMessage, SendResult
from events.settings import BusSettings

log = logging.getLogger(__name__)

SHARED_TASK = "shop.handle_event"
BROKER_ERRORS: tuple[type[Exception], ...] = (OSError, AMQPError, KombuError, MessageNacked)


class Topology:
    """The one place that names what this shop declares on RabbitMQ. `amqp_prefix` keeps several shops (or test
    runs) apart on one vhost."""

    def __init__(self, settings: BusSettings) -> None:
        self.prefix = settings.amqp_prefix
        self.exchange = Exchange(f"{self.prefix}shop.events", type="topic", durable=True)
        self.dead_letter_exchange = Exchange(f"{self.prefix}shop.deadletter", type="direct", durable=True)
        self.control_exchange = f"{self.prefix}shop"
        """celery's remote control (`shop status` pings workers through it) and events, kept to this shop"""
        self.event_exchange = f"{self.prefix}shop.celeryev"

    def queue_name(self, queue: str) -> str:
        return f"{self.prefix}{queue}"

    def queue(self, spec: ServiceSpec) -> Queue:
        name = self.queue_name(spec.queue)
        return Queue(
            name,
            bindings=[binding(self.exchange, routing_key=type_name) for type_name in spec.event_types],
            durable=True,
            queue_arguments={
                "x-dead-letter-exchange": self.dead_letter_exchange.name,
                "x-dead-letter-routing-key": name,
            },
        )

    def dead_letter_queue(self, spec: ServiceSpec) -> Queue:
        name = self.queue_name(spec.queue)
        return Queue(f"{name}.dead", self.dead_letter_exchange, routing_key=name, durable=True)

    def declare(self, connection: Connection, specs: Iterable[ServiceSpec]) -> None:
        channel = connection.default_channel
        self.exchange.declare(channel=channel)
        self.dead_letter_exchange.declare(channel=channel)
        for spec in specs:
            if spec.handlers:
                self.dead_letter_queue(spec).declare(channel=channel)
                self.queue(spec).declare(channel=channel)

    def delete(self, connection: Connection, specs: Iterable[ServiceSpec]) -> None:
        """Remove exactly what `declare` creates for `specs`, the two exchanges, and the exchanges celery's workers
        and `shop status` declare under this prefix (tests clean up with this)."""
        channel = connection.default_channel
        for spec in specs:
            if spec.handlers:
                self.queue(spec)(channel).delete()
                self.dead_letter_queue(spec)(channel).delete()
        control = (f"{self.control_exchange}.pidbox", f"reply.{self.control_exchange}.pidbox", self.event_exchange)
        for name in (self.exchange.name, self.dead_letter_exchange.name, *control):
            channel.exchange_delete(name)


def broker_connection(settings: BusSettings) -> Connection:
    """Publisher confirms on every channel: a publish returns once RabbitMQ has the message (on disk, for a
    persistent message in a durable queue), which is what allows the outbox entry to be settled."""
    options = {"confirm_publish": True, "max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
    return Connection(settings.broker_url, transport_options=options, connect_timeout=5)


def declare(settings: BusSettings, specs: Iterable[ServiceSpec]) -> None:
    """Exchanges, queues, dead-letter queues and bindings (idempotent)."""
    with broker_connection(settings) as connection:
        Topology(settings).declare(connection, specs)


def waiting_counts(settings: BusSettings, specs: Iterable[ServiceSpec]) -> dict[str, int | str]:
    """{service: messages ready in its queue} for `shop status` ('?' for a queue not declared yet). AMQP does not
    tell how many a consumer holds unacknowledged."""
    topology, counts = Topology(settings), {}
    with broker_connection(settings) as connection:
        for spec in specs:
            try:
                _, counts[spec.name], _ = connection.channel().queue_declare(
                    topology.queue_name(spec.queue), passive=True)
            except BROKER_ERRORS:
                counts[spec.name] = "?"
    return counts


class AmqpBroker:
    """`Broker` on RabbitMQ: publishes with confirms; knows who subscribes from the specs it declared (AMQP cannot
    list an exchange's bindings)."""

    def __init__(self, settings: BusSettings, specs: Iterable[ServiceSpec]) -> None:
        self.settings = settings
        self.topology = Topology(settings)
        self._routes: dict[str, list[str]] = {}
        for spec in specs:
            for type_name in spec.event_types:
                self._routes.setdefault(type_name, []).append(spec.queue)
        self._app = Celery("shop.messages", set_as_current=False)
        self._connection = broker_connection(settings)
        self._producer: Producer | None = None
        self._returned: list[str] = []
        self._lock = threading.Lock()  # one AMQP connection; the HTTP edge publishes from several threads

    def subscribers(self, event_type: str) -> list[str]:
        return sorted(self._routes.get(event_type, []))

    def send(self, messages: Sequence[OutgoingMessage], acknowledge: object | None = None) -> SendResult:
        """Publish one by one, each confirmed before it counts as sent. On a broker error the rest are left out of
        the result (they stay in the outbox for the relay): raising would only make the caller redo work its inbox
        already refuses. (`acknowledge` is not for RabbitMQ: the consumer's channel acks its messages itself.)"""
        result = SendResult()
        try:
            with self._lock:
                producer = self._ensure_producer()
                for message in messages:
                    self._returned.clear()
                    self._publish(producer, message)
                    if self._returned:
                        result.unroutable.append(message)
                    else:
                        result.sent.append(message.id)
        except BROKER_ERRORS as exc:
            log.warning("RabbitMQ publish failed (%r); %d event(s) stay in the outbox for the relay",
                        exc, len(messages) - len(result.sent) - len(result.unroutable))
            self.reset()
        return result

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            # Declaring the exchange (not the queues) makes an event published before any subscriber was declared
            # unroutable, as on Redis, instead of a channel error. (Not as the producer's exchange: kombu would
            # then send what is meant for the default exchange, '', to it.)
            channel = self._connection.default_channel
            self.topology.exchange(channel).declare()
            self._producer = Producer(channel, on_return=self._on_return)
        return self._producer

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(routing_key)

    def _publish(self, producer: Producer, message: OutgoingMessage) -> None:
        task = self._app.amqp.as_task_v2(
            message.id, SHARED_TASK, args=(), kwargs={"envelope": message.envelope, "signature": message.signature},
            ignore_result=True,
        )
        task.headers.update(message.headers)  # the trace context: celery hands custom headers to the task's request
        if message.queue:
            exchange, routing_key = "", self.topology.queue_name(message.queue)
        else:
            exchange, routing_key = self.topology.exchange.name, message.type
        producer.publish(
            task.body, exchange=exchange, routing_key=routing_key, serializer="json", headers=task.headers,
            delivery_mode=2, mandatory=True, retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2},
            **task.properties,
        )

    def reset(self) -> None:
        """Drop a connection that failed; the next send connects again."""
        with self._lock:
            self._producer = None
            with contextlib.suppress(Exception):  # already broken
                self._connection.release()
            self._connection = broker_connection(self.settings)

    def move_dead_letters(self, spec: ServiceSpec, add: Callable[..., object], limit: int = 100) -> int:
        """Move what RabbitMQ dead-lettered from `spec`'s queue into its dead-letter store (`add`, called as
        `DeadLetters.add`), each message acknowledged only once stored."""
        moved = 0
        try:
            with self._lock:
                queue = self.topology.dead_letter_queue(spec)(self._connection.default_channel)
                for _ in range(limit):
                    message = queue.get(no_ack=False)
                    if message is None:
                        break
                    add(spec.name, "rejected by the broker", _death_detail(message), _original(message),
                        attempts=_death_count(message))
                    message.ack()
                    moved += 1
        except BROKER_ERRORS as exc:
            log.warning("moving %s's dead letters from RabbitMQ: %r", spec.name, exc)
            self.reset()
        return moved

    def close(self) -> None:
        self._connection.release()


class AmqpWorkerHooks:
    """`BrokerHooks` on RabbitMQ: the broker redelivers on its own; nothing to fold into a commit or put back."""

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self.topology = Topology(settings)

    def configure(self, app: Celery) -> None:
        configure_celery(app, self.settings)

    def consumer_queue(self, spec: ServiceSpec) -> Queue:
        return self.topology.queue(spec)

    def task_name(self, spec: ServiceSpec) -> str:
        return SHARED_TASK

    def acknowledgement(self, request: Any) -> None:
        return None

    def acknowledged(self, request: Any) -> None:
        """Never called: no store folds a RabbitMQ ack into its commit."""

    def settle(self, request: Any) -> None:
        """celery's ack follows: RabbitMQ requeues what a lost consumer held, and counts nothing by position."""

    def on_connected(self) -> None:
        """RabbitMQ requeued what the previous connection held as soon as it dropped."""

    def may_have_died(self, request: Any) -> bool:
        """RabbitMQ flags every message a lost consumer held as redelivered, run or not: each may have killed it."""
        return True

    def decode_error_detail(self, message: Any, exc: Exception) -> str:
        return repr(exc)


def configure_celery(app: Celery, settings: BusSettings) -> None:
    """Celery on RabbitMQ: confirmed publishes, and control/event exchanges under the shop's prefix so that
    `shop status` pings only this shop's workers."""
    topology = Topology(settings)
    app.conf.update(
        broker_transport_options={"confirm_publish": True},
        broker_use_ssl=settings.broker_url.startswith("amqps://") or None,
        control_exchange=topology.control_exchange,
        event_exchange=topology.event_exchange,
    )


def _deaths(message: Message) -> list[dict[str, Any]]:
    deaths = (message.headers or {}).get("x-death")
    return [death for death in deaths if isinstance(death, dict)] if isinstance(deaths, list) else []


def _death_detail(message: Message) -> str:
    return "; ".join(f"{d.get('reason')} in {d.get('queue')} ({d.get('count')}x)" for d in _deaths(message))


def _death_count(message: Message) -> int:
    return sum(int(d.get("count") or 0) for d in _deaths(message)) or 1


def _original(message: Message) -> dict[str, Any]:
    """The signed envelope when the message is one of ours (so the dead letter can be replayed), else its raw body."""
    body = message.body.decode(errors="replace") if isinstance(message.body, bytes) else str(message.body)
    try:
        _args, kwargs, _embed = json.loads(body)
        if isinstance(kwargs, dict) and set(kwargs) == {"envelope", "signature"}:
            return kwargs
    except (ValueError, TypeError):
        pass
    return {"raw_body": body[:65536], "headers": {k: str(v) for k, v in (message.headers or {}).items()}}
