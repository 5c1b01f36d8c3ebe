"""RabbitMQ as the message broker (BROKER_URL=amqp://...), through kombu and celery's amqp transport.

What is the same as on Redis: documents, inbox, delivery counters, the dead-letter store, the event log and the
outbox stay in Redis (REDIS_URL), so handlers, the unit of work, `shop dlq` and every check a worker makes before a
handler runs are the same code (events/redis_bus.py). What differs, and why:

* The broker routes. A durable topic exchange `<prefix>shop.events`; one durable queue per service, bound with the
  exact event type names it handles (no wildcards: the same rule as on Redis). Messages are persistent. A
  redelivery (a reject with requeue, the connection of a worker that died) goes back to the queue it came from,
  never through the exchange again, so the fan-out-on-redelivery pitfall of kombu's Redis transport does not exist
  here. Celery retries would go through the delivery's exchange and routing key (one copy per subscriber):
  `ServiceRuntime` sends them to its own queue instead.
* One task name. The exchange copies one message into each bound queue, so the message cannot name a per-queue task
  as the Redis messages do; every service registers `shop.handle_event`. A message in the wrong queue still ends as
  a dead letter ("no handler").
* Native dead-lettering. Each queue has `x-dead-letter-exchange` = `<prefix>shop.deadletter` and its own
  `<queue>.dead`: a message rejected without requeue (or, if limits are added, expired or over length) is kept by
  RabbitMQ. The relay thread moves it into the service's dead-letter store with the broker's reason (`x-death`), so
  `shop dlq` lists and replays it like any other dead letter.
* The classic transactional outbox + relay. Redis and RabbitMQ cannot share a transaction, so the commit script
  cannot push into the queues. It writes, with the state and the inbox mark, one outbox entry per published event;
  after the commit the publisher sends each entry as a persistent, mandatory message, waits for the broker's confirm
  and only then deletes the entry. A crash or a broker outage between the commit and the confirm leaves the entry,
  and `AmqpRelay` (a thread in every worker) sends entries older than `redeliver_after`. The price is a possible
  second copy (a crash after the confirm, before the delete), which the consumers' inbox absorbs.
* Unroutable events. `mandatory` makes RabbitMQ return a message no queue is bound to (it arrives before the
  confirm); the publisher writes the 'unroutable' dead letter and settles the entry in one MULTI. An alternate
  exchange would keep such messages inside RabbitMQ, away from `shop dlq`, so it is not used.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from amqp.exceptions import AMQPError, MessageNacked
from celery import Celery
from kombu import Connection, Exchange, Message, Producer, Queue, binding
from kombu.exceptions import KombuError

from events.bus import ServiceSpec
from events.deadletters import UNROUTABLE, DeadLetterStore, dead_letter_record
from events.envelope import Sealed
from events.keys import Keys
from events.redis_bus import Delivery, OutboxRelay, RedisPublisher, redis_client
from events.settings import BusSettings

log = logging.getLogger(__name__)

SHARED_TASK = "shop.handle_event"
OUTBOX = "amqp"
"""`Keys.outbox(OUTBOX)`: events committed but not yet confirmed by RabbitMQ (id -> entry), with its schedule."""
BROKER_ERRORS = (OSError, AMQPError, KombuError, MessageNacked)


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

    def declare(self, connection: Connection, specs: list[ServiceSpec]) -> None:
        channel = connection.default_channel
        self.exchange.declare(channel=channel)
        self.dead_letter_exchange.declare(channel=channel)
        for spec in specs:
            self.dead_letter_queue(spec).declare(channel=channel)
            self.queue(spec).declare(channel=channel)

    def delete(self, connection: Connection, specs: list[ServiceSpec]) -> None:
        """Remove exactly what `declare` creates for `specs`, the two exchanges, and the exchanges celery's workers
        and `shop status` declare under this prefix (tests clean up with this)."""
        channel = connection.default_channel
        for spec in specs:
            self.queue(spec)(channel).delete()
            self.dead_letter_queue(spec)(channel).delete()
        control = (f"{self.control_exchange}.pidbox", f"reply.{self.control_exchange}.pidbox", self.event_exchange)
        for name in (self.exchange.name, self.dead_letter_exchange.name, *control):
            channel.exchange_delete(name)


def broker_connection(settings: BusSettings) -> Connection:
    """Publisher confirms on every channel: a publish returns once RabbitMQ has the message (on disk, for a
    persistent message in a durable queue), which is what allows the outbox entry to be deleted."""
    options = {"confirm_publish": True, "max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
    return Connection(settings.broker_url, transport_options=options, connect_timeout=5)


def declare_amqp_topology(settings: BusSettings, specs: list[ServiceSpec]) -> None:
    """Declare exchanges, queues, dead-letter queues and bindings (idempotent), and record the bindings in Redis for
    `AmqpRouter`."""
    topology = Topology(settings)
    with broker_connection(settings) as connection:
        topology.declare(connection, specs)
    client = redis_client(settings)
    try:
        with client.pipeline(transaction=False) as pipe:
            for spec in specs:
                for type_name in spec.event_types:
                    pipe.sadd(Keys.routes(topology.exchange.name, type_name), topology.queue_name(spec.queue))
            pipe.execute()
    finally:
        client.close()


def waiting_counts(settings: BusSettings, specs: list[ServiceSpec]) -> dict[str, int | str]:
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


def configure_celery(app: Celery, settings: BusSettings) -> None:
    """Celery on RabbitMQ: confirmed publishes (retries), and control/event exchanges under the shop's prefix so that
    `shop status` pings only this shop's workers."""
    app.conf.update(
        broker_transport_options={"confirm_publish": True},
        broker_use_ssl=settings.broker_url.startswith("amqps://") or None,
        control_exchange=Topology(settings).control_exchange,
        event_exchange=Topology(settings).event_exchange,
    )


class AmqpRouter:
    """Event type -> the queues this shop bound to it, as `declare_amqp_topology` recorded them in Redis.

    RabbitMQ routes by its own bindings (AMQP cannot list them); this record only answers "who would receive it" for
    `shop publish` and before replaying an unroutable dead letter."""

    def __init__(self, settings: BusSettings, client: Any) -> None:
        self._redis = client
        self._exchange = Topology(settings).exchange.name

    def queues_for(self, event_type: str) -> list[str]:
        return sorted(member.decode() for member in self._redis.smembers(Keys.routes(self._exchange, event_type)))


class AmqpMessages:
    """Celery task messages (protocol 2, JSON) for RabbitMQ: one shared task name, since one message reaches every
    subscriber's queue."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def task_name(self, queue: str) -> str:
        return SHARED_TASK

    def build(self, task_id: str, envelope: str, signature: str) -> Any:
        return self._app.amqp.as_task_v2(
            task_id, SHARED_TASK, args=(), kwargs={"envelope": envelope, "signature": signature}, ignore_result=True
        )


class AmqpPublisher(RedisPublisher):
    """Commits like the Redis publisher (one script: state, inbox, event log), with the outgoing events written to
    the outbox only; then sends them to RabbitMQ and settles each entry once the broker confirmed it."""

    def __init__(self, settings: BusSettings, app: Celery | None = None) -> None:
        super().__init__(settings, app)
        self.topology = Topology(settings)
        self._connection = broker_connection(settings)
        self._producer: Producer | None = None
        self._returned: list[str] = []
        self._lock = threading.Lock()  # one AMQP connection; the HTTP edge publishes from several threads

    def _messages_and_router(self) -> tuple[AmqpMessages, AmqpRouter]:  # type: ignore[override]
        return AmqpMessages(self.app), AmqpRouter(self.settings, self.redis)

    # -- staged in the commit script ---------------------------------------------------------------------------------
    def deliveries_for(self, sealed: Sealed, envelope: Any) -> list[Delivery]:
        """One outbox entry per event, whatever the number of subscribers: the exchange makes the copies."""
        entry = {"type": envelope.type, "envelope": sealed.envelope, "signature": sealed.signature, "queue": None}
        return [Delivery("", json.dumps(entry), str(envelope.event_id), OUTBOX)]

    def delivery(self, queue: str, sealed: Sealed, event_id: str) -> Delivery:
        """An entry for one service's queue only (dead-letter replay), sent through the default exchange."""
        entry = {"type": None, "envelope": sealed.envelope, "signature": sealed.signature,
                 "queue": self.topology.queue_name(queue)}
        return Delivery("", json.dumps(entry), f"{event_id}:{queue}", OUTBOX)

    def _after_commit(self, deliveries: list[Delivery]) -> None:
        self.send([(d.id, d.payload) for d in deliveries if d.queue == OUTBOX])

    # -- sent after it ----------------------------------------------------------------------------------------------
    def send(self, entries: list[tuple[str, str | bytes]]) -> int:
        """Publish committed outbox entries one by one, each confirmed before it counts as sent; settle the sent and
        the returned (unroutable) ones. On a broker error the rest stay in the outbox for the relay: the commit
        stands, and raising here would only make the caller redo work its inbox already refuses."""
        sent: list[tuple[str, dict[str, Any]]] = []
        returned: list[tuple[str, dict[str, Any]]] = []
        try:
            with self._lock:
                producer = self._ensure_producer()
                for entry_id, payload in entries:
                    entry = json.loads(payload)
                    self._returned.clear()
                    self._publish(producer, entry_id, entry)
                    (returned if self._returned else sent).append((entry_id, entry))
        except BROKER_ERRORS as exc:
            log.warning("RabbitMQ publish failed (%r); %d event(s) stay in the outbox for the relay",
                        exc, len(entries) - len(sent) - len(returned))
            self._reset()
        if sent or returned:
            self._settle(sent, returned)
        return len(sent) + len(returned)

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

    def _publish(self, producer: Producer, entry_id: str, entry: dict[str, Any]) -> None:
        message = self.messages.build(entry_id, entry["envelope"], entry["signature"])
        if entry.get("queue"):
            exchange, routing_key = "", entry["queue"]
        else:
            exchange, routing_key = self.topology.exchange.name, entry["type"]
        producer.publish(
            message.body, exchange=exchange, routing_key=routing_key, serializer="json", headers=message.headers,
            delivery_mode=2, mandatory=True, retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2},
            **message.properties,
        )

    def _reset(self) -> None:
        """Drop a connection that failed; the next send or sweep connects again."""
        with self._lock:
            self._producer = None
            try:
                self._connection.release()
            except Exception:  # noqa: BLE001 - already broken
                pass
            self._connection = broker_connection(self.settings)

    def _settle(self, sent: list[tuple[str, dict[str, Any]]], returned: list[tuple[str, dict[str, Any]]]) -> None:
        ids = [entry_id for entry_id, _ in sent + returned]
        with self.redis.pipeline(transaction=True) as pipe:
            for _, entry in returned:
                about = entry.get("type") or f"queue {entry.get('queue')}"
                record = dead_letter_record(
                    UNROUTABLE, f"unroutable: no queue is bound to {about}", "",
                    Sealed(envelope=entry["envelope"], signature=entry["signature"]), attempts=0,
                )
                pipe.hset(Keys.dead_letters(UNROUTABLE), record["id"], json.dumps(record))
            pipe.hdel(Keys.outbox(OUTBOX), *ids)
            pipe.zrem(Keys.outbox_schedule(OUTBOX), *ids)
            pipe.execute()

    # -- native dead letters -----------------------------------------------------------------------------------------
    def take_dead_letters(self, spec: ServiceSpec, store: DeadLetterStore, limit: int = 100) -> int:
        """Move what RabbitMQ dead-lettered from `spec`'s queue into its dead-letter store (each acknowledged only
        once stored)."""
        moved = 0
        with self._lock:
            queue = self.topology.dead_letter_queue(spec)(self._connection.default_channel)
            for _ in range(limit):
                message = queue.get(no_ack=False)
                if message is None:
                    break
                store.add(spec.name, "rejected by the broker", _death_detail(message), _original(message),
                          attempts=_death_count(message))
                message.ack()
                moved += 1
        return moved

    def close(self) -> None:
        self._connection.release()
        self.redis.close()


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


# An entry is claimed by pushing its due time forward, in one script: two relays never send one entry in the same
# period, and an entry whose publish failed comes due again later.
CLAIM_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, id in ipairs(due) do
  local payload = redis.call('HGET', KEYS[1], id)
  if payload == false then
    redis.call('ZREM', KEYS[2], id)
  else
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    table.insert(claimed, id)
    table.insert(claimed, payload)
  end
end
return claimed
"""


class AmqpRelay(OutboxRelay):
    """Sends the events a crash or a broker outage left in the outbox (committed, never confirmed), and moves the
    service's native dead letters into its dead-letter store. Runs as a thread in every worker, as `OutboxRelay`
    does on Redis, and shares its loop; all its state is in Redis and RabbitMQ, so killing it loses nothing."""

    def __init__(self, spec: ServiceSpec, settings: BusSettings, publisher: AmqpPublisher) -> None:
        super().__init__(spec.queue, settings, publisher.redis)
        self.spec, self.publisher = spec, publisher
        self.dead_letters = DeadLetterStore(publisher.redis)
        self._claim = publisher.redis.register_script(CLAIM_SCRIPT)

    def sweep(self) -> int:
        """One pass; returns how many outbox entries were sent (or dead-lettered as unroutable)."""
        now = time.time()
        flat = self._claim(keys=[Keys.outbox(OUTBOX), Keys.outbox_schedule(OUTBOX)],
                           args=[now, now + self.settings.redeliver_after, 500])
        claimed = [(flat[i].decode(), flat[i + 1]) for i in range(0, len(flat), 2)]
        resent = self.publisher.send(claimed) if claimed else 0
        if resent:
            self.resent += resent
            self.redis.incrby(Keys.relayed(OUTBOX), resent)
            log.warning("outbox relay: sent %d event(s) committed but never confirmed by RabbitMQ", resent)
        try:
            self.publisher.take_dead_letters(self.spec, self.dead_letters)
        except BROKER_ERRORS as exc:
            log.warning("moving %s's dead letters from RabbitMQ: %r", self.spec.name, exc)
            self.publisher._reset()
        return resent
