"""The Redis bus: topology, routing, transactional publishing, the outbox relay, and the celery configuration.

Design (see the README for the broker pitfalls each choice avoids):

* Topology. One kombu *direct* exchange, `shop.events`; each service owns one durable queue (a Redis list) bound
  with the exact event type names it handles. `declare_topology` writes those bindings; `shop up`, every worker and
  every publisher run it before publishing, so an event published while a subscriber is down waits in its queue.
* Second broker. With BROKER_URL=amqp://... the messages travel through RabbitMQ instead (events/amqp_bus.py: native
  topic exchange, dead-letter exchange, outbox + relay); everything kept in Redis stays here. The few places that
  choose between the two are marked "broker choice".
* Publishing. A publisher routes in Python from the binding table (cached for `topology_refresh` seconds, not read
  per message) and stages, for each bound queue, a complete celery task message addressed to that queue *through the
  default exchange*. Redelivery and celery retries of such a message stay in that one queue: no extra copies in
  other services' queues (the fan-out-on-redelivery pitfall). An event bound to no queue is dead-lettered as
  "unroutable" in the same step.
* Atomicity. The service keeps its own documents in this Redis, under `shop:<service>:`. One Lua script checks the
  inbox and the versions of what the handler read, then writes the documents, the inbox mark, the LPUSH of every
  outgoing message, its outbox copy and the event log entry: "state saved but event never published" cannot happen.
  The outbox copy exists because a message taken by a worker node that never comes back would wait for that
  node forever; `OutboxRelay` re-sends what stayed unsettled too long. The price of this design is that a
  service's store lives beside the broker; a service on its own SQL database would need an outbox table + relay.
* Consumption: events/consumer.py (the celery worker runtime); dead letters: events/deadletters.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu import Connection, Exchange, Queue, binding

from events.bus import ServiceSpec
from events.deadletters import UNROUTABLE, dead_letter_record
from events.envelope import Envelope, Sealed, seal
from events.keys import Keys
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, UnitOfWork

log = logging.getLogger(__name__)

EVENTS_EXCHANGE = Exchange("shop.events", type="direct", durable=True)


def redis_client(settings: BusSettings) -> redis.Redis:
    options: dict[str, Any] = {"health_check_interval": 30}
    if settings.redis_url.startswith("rediss://"):
        options["ssl_cert_reqs"] = settings.redis_ssl_cert_reqs
    return redis.Redis.from_url(settings.redis_url, **options)


def _kombu_ssl(settings: BusSettings) -> dict[str, Any] | None:
    """rediss:// without explicit `ssl_cert_reqs` would skip certificate checks; always pass it."""
    if not settings.redis_url.startswith("rediss://"):
        return None
    import ssl

    return {"ssl_cert_reqs": getattr(ssl, f"CERT_{settings.redis_ssl_cert_reqs.upper()}")}


def kombu_connection(settings: BusSettings) -> Connection:
    return Connection(settings.redis_url, ssl=_kombu_ssl(settings) or False)


# --------------------------------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------------------------------
def service_queue(spec: ServiceSpec) -> Queue:
    """The queue as declared for routing: durable, bound with each exact event type (no wildcards)."""
    return Queue(
        spec.queue,
        bindings=[binding(EVENTS_EXCHANGE, routing_key=type_name) for type_name in spec.event_types],
        durable=True,
    )


def declare_topology(settings: BusSettings, specs: list[ServiceSpec]) -> None:
    """Idempotent: writes the exchange's bindings so publishers can route before any worker ever ran."""
    if settings.broker_is_amqp:  # broker choice: RabbitMQ holds its own exchanges, queues and bindings
        from events.amqp_bus import declare_amqp_topology

        return declare_amqp_topology(settings, specs)
    with kombu_connection(settings) as connection:
        channel = connection.default_channel
        for spec in specs:
            service_queue(spec).declare(channel=channel)


class Router:
    """Event type -> bound queues, read from kombu's binding table and cached briefly.

    The cache keeps a topology read off the hot path; bindings only change when a new service is declared, which
    `shop up` does before anything is published."""

    def __init__(self, settings: BusSettings, connection: Connection) -> None:
        self._channel = connection.default_channel
        self._ttl = settings.topology_refresh
        self._table: dict[str, list[str]] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()  # the HTTP edge publishes from several threads

    def queues_for(self, event_type: str) -> list[str]:
        if time.monotonic() - self._loaded_at > self._ttl:
            with self._lock:
                self._reload()
        return self._table.get(event_type, [])

    def _reload(self) -> None:
        if time.monotonic() - self._loaded_at > self._ttl:
            table: dict[str, list[str]] = {}
            for routing_key, _pattern, queue in self._channel.get_table(EVENTS_EXCHANGE.name):
                table.setdefault(routing_key, []).append(queue)
            self._table = {key: sorted(set(queues)) for key, queues in table.items()}
            self._loaded_at = time.monotonic()


class _CommandCollector:
    """Receives the final Redis commands kombu would run for a publish (its batch-publish hook), so they can run
    inside our own atomic script instead of a separate round trip."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


class MessageFactory:
    """Builds the exact celery task message (protocol 2, JSON) that a worker of `queue` will execute, addressed
    through the default exchange so that any redelivery or retry goes back to that queue only."""

    def __init__(self, settings: BusSettings, app: Celery) -> None:
        self._settings = settings
        self._app = app
        self._connection = kombu_connection(settings)
        self._channel = self._connection.default_channel

    def task_name(self, queue: str) -> str:
        return f"{queue}.handle_event"

    def build(self, queue: str, sealed: Sealed, task_id: str) -> tuple[str, str]:
        """(Redis list key, serialized message) for one delivery of `sealed` to `queue`."""
        from kombu.serialization import dumps

        message = self._app.amqp.as_task_v2(
            task_id, self.task_name(queue), args=(), kwargs=sealed.model_dump(), ignore_result=True,
            # celery would otherwise build a safe repr of the whole signed envelope for every message
            argsrepr="()", kwargsrepr="{envelope, signature}",
        )
        content_type, content_encoding, body = dumps(message.body, serializer="json")
        prepared = self._channel.prepare_message(
            body, 0, content_type, content_encoding, message.headers, message.properties
        )
        collector = _CommandCollector()
        self._channel.basic_publish(prepared, "", queue, _publish_batch=collector)
        [(command, (key, payload))] = collector.commands
        assert command == "lpush", command
        return key, payload


# --------------------------------------------------------------------------------------------------------------------
# The atomic step, and the outbox that backs it up
# --------------------------------------------------------------------------------------------------------------------
# Every message pushed to a queue is also kept in that queue's outbox (a hash by event id, plus a sorted set of when
# to check on it) until its consumer commits having handled it (or dead-letters it). Why keep a copy when the push is
# already atomic with the state: a message can be stranded where no one will look again. Each worker node keeps its
# taken and unacked messages under its own name (events/keys.py), and only that node puts them back when it returns;
# a node that is scaled away or renamed never does. (kombu's own take, BRPOP and then the unacked record in a second
# command, would even lose a message to a kill between the two; the consuming channel in events/consumer.py makes the
# take an atomic move instead.) The outbox relay (`OutboxRelay`) re-sends what stayed unsettled too long; the
# consumer's inbox absorbs the copy.
#
# Every published event is also appended to the event log (a capped Redis stream): the history that `shop trace`
# follows and that a new service can replay to build its projections.
#
# The consumer's acknowledgement can be part of the step too: a worker keeps each message it took in its node's taken
# list until it acknowledges it (events/consumer.py); removing it here makes "handled" and "acknowledged" one fact and
# saves the ack's own round trip.
#
# KEYS: inbox, deliveries counter, own outbox, own outbox schedule ('' for all four when the work has no cause),
#       the taken list ('' when nothing is acknowledged here), n document keys, then three keys per delivery: target, target's outbox, target's outbox schedule
#       (outbox keys '' when the target is a dead-letter hash; target '' when the broker is RabbitMQ), then the
#       event log.
# ARGV: n, inbox ttl, cause event id, when to check on the new deliveries, event log length, the taken message to
#       acknowledge, n expected versions, n documents, then per delivery: payload, id; then per published event:
#       type, correlation id, envelope, signature.
# Returns 1 committed, 0 already handled, -1 a document changed since it was read.
COMMIT_SCRIPT = """
local n = tonumber(ARGV[1])
local K, A = 5, 6
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, n do
  local current = redis.call('HGET', KEYS[K + i], 'v') or '0'
  if current ~= ARGV[A + i] then return -1 end
end
for i = 1, n do
  redis.call('HSET', KEYS[K + i], 'v', tonumber(ARGV[A + i]) + 1, 'd', ARGV[A + n + i])
end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], '1', 'EX', ARGV[2]) end
if KEYS[2] ~= '' then redis.call('DEL', KEYS[2]) end
if KEYS[3] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
end
if KEYS[5] ~= '' then redis.call('LREM', KEYS[5], 1, ARGV[6]) end
local a = A + 1 + 2 * n
for k = K + 1 + n, #KEYS - 1, 3 do
  if KEYS[k + 1] == '' then
    redis.call('HSET', KEYS[k], ARGV[a + 1], ARGV[a])
  else
    if KEYS[k] ~= '' then redis.call('LPUSH', KEYS[k], ARGV[a]) end
    redis.call('HSET', KEYS[k + 1], ARGV[a + 1], ARGV[a])
    redis.call('ZADD', KEYS[k + 2], ARGV[4], ARGV[a + 1])
  end
  a = a + 2
end
for e = a, #ARGV, 4 do
  redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', ARGV[5], '*',
             'type', ARGV[e], 'correlation_id', ARGV[e + 1], 'envelope', ARGV[e + 2], 'signature', ARGV[e + 3])
end
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """One message for one target: a queue (with its outbox), a dead-letter hash, or (target '') an outbox only."""

    target: str
    payload: str
    id: str
    queue: str | None = None

    @property
    def keys(self) -> list[str]:
        if self.queue is None:
            return [self.target, "", ""]
        return [self.target, Keys.outbox(self.queue), Keys.outbox_schedule(self.queue)]


class RedisPublisher:
    """Everything a process needs to commit units of work and publish: client, router, message factory, script."""

    def __init__(self, settings: BusSettings, app: Celery | None = None) -> None:
        self.settings = settings
        self.redis = redis_client(settings)
        self.app = app or make_celery_app("shop.publisher", settings)
        self.messages, self.router = self._messages_and_router()
        self._script = self.redis.register_script(COMMIT_SCRIPT)

    def _messages_and_router(self) -> tuple[MessageFactory, Router]:
        messages = MessageFactory(self.settings, self.app)
        return messages, Router(self.settings, messages._connection)

    def _after_commit(self, deliveries: list[Delivery]) -> None:
        """Nothing on Redis: the script itself queued every message. (AmqpPublisher sends them here.)"""

    def close(self) -> None:
        self.messages._connection.release()
        self.redis.close()

    def unit_of_work(self, service: str, cause: Envelope | None = None, inbox: str | None = None) -> RedisUnitOfWork:
        return RedisUnitOfWork(self, service, cause, inbox)

    def commit(self, uow: UnitOfWork) -> None:
        uow.commit()

    def deliveries_for(self, sealed: Sealed, envelope: Envelope) -> list[Delivery]:
        """One message per subscribed queue, or one unroutable dead letter."""
        queues = self.router.queues_for(envelope.type)
        if not queues:
            record = dead_letter_record(
                UNROUTABLE, f"unroutable: no queue is bound to {envelope.type}", "", sealed, attempts=0
            )
            return [Delivery(Keys.dead_letters(UNROUTABLE), json.dumps(record), record["id"])]
        return [self.delivery(queue, sealed, str(envelope.event_id)) for queue in queues]

    def delivery(self, queue: str, sealed: Sealed, event_id: str) -> Delivery:
        key, payload = self.messages.build(queue, sealed, f"{event_id}:{queue}")
        return Delivery(key, payload, event_id, queue)

    def run_script(
        self,
        envelopes: list[Envelope] = (),
        *,
        cause: tuple[str, str] | None = None,
        writes: list[tuple[str, str, str]] = (),
        extra_deliveries: list[Delivery] = (),
        acknowledge: tuple[str, bytes] | None = None,
    ) -> int:
        """The atomic step. `envelopes` are published (routed, queued, logged); `cause` = (service, event id) being
        handled; `writes` = (key, expected version, json); `extra_deliveries` go to one queue and are not logged;
        `acknowledge` = (taken list, message) of the message being handled."""
        sealed = [(envelope, seal(envelope, self.settings.key)) for envelope in envelopes]
        deliveries = [d for envelope, s in sealed for d in self.deliveries_for(s, envelope)]
        deliveries += extra_deliveries
        service, event_id = cause or ("", "")
        keys = [
            Keys.inbox(service, event_id) if cause else "",
            Keys.deliveries(service, event_id) if cause else "",
            Keys.outbox(service) if cause else "",
            Keys.outbox_schedule(service) if cause else "",
            acknowledge[0] if acknowledge else "",
            *(key for key, _, _ in writes),
            *(key for delivery in deliveries for key in delivery.keys),
            Keys.event_log(),
        ]
        args = [
            len(writes),
            self.settings.inbox_ttl,
            event_id,
            time.time() + self.settings.redeliver_after,
            self.settings.event_log_length,
            acknowledge[1] if acknowledge else "",
            *(version for _, version, _ in writes),
            *(document for _, _, document in writes),
            *(value for delivery in deliveries for value in (delivery.payload, delivery.id)),
            *(
                value
                for envelope, s in sealed
                for value in (envelope.type, str(envelope.correlation_id), s.envelope, s.signature)
            ),
        ]
        outcome = self._script(keys=keys, args=args)
        if outcome == 1:
            self._after_commit(deliveries)
        return outcome

    def publish(self, *envelopes: Envelope) -> None:
        """Publish outside any unit of work (sample events): still one atomic step for all of them."""
        self.run_script(list(envelopes))

    def enqueue_sealed(self, queue: str, sealed: Sealed, event_id: str) -> None:
        """Put a signed message straight into one service's queue (dead-letter replay), outbox included."""
        self.run_script(extra_deliveries=[self.delivery(queue, sealed, event_id)])


class RedisUnitOfWork(UnitOfWork):
    def __init__(
        self, publisher: RedisPublisher, service: str, cause: Envelope | None = None, inbox: str | None = None
    ) -> None:
        super().__init__(service, cause, inbox)
        self._publisher = publisher
        self._redis = publisher.redis
        self._versions: dict[tuple[str, str], str] = {}
        self.acknowledgement: tuple[str, bytes] | None = None
        """(taken list, message): set by the consumer runtime to acknowledge the message being handled in the
        commit itself."""

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        version, data = self._redis.hmget(Keys.document(self.service, collection, key), "v", "d")
        self._versions[(collection, key)] = version.decode() if version else "0"
        return None if data is None else json.loads(data)

    def already_handled(self) -> bool:
        return self.cause is not None and bool(self._redis.exists(Keys.inbox(self.inbox, self.cause.event_id)))

    def commit(self) -> None:
        writes = [
            (
                Keys.document(self.service, collection, key),
                self._versions.get((collection, key), "0"),
                json.dumps(document, separators=(",", ":")),
            )
            for (collection, key), document in self._writes.items()
        ]
        outcome = self._publisher.run_script(
            self.outbox,
            cause=(self.inbox, str(self.cause.event_id)) if self.cause else None,
            writes=writes,
            acknowledge=self.acknowledgement,
        )
        if outcome == 0:
            raise AlreadyHandled(str(self.cause.event_id if self.cause else ""))
        if outcome == -1:
            raise ConcurrentUpdate(", ".join(f"{c}/{k}" for c, k in self._writes))
        self.committed, self.outbox, self._writes = self.outbox, [], {}


# A queue with a backlog is left alone: a lost message cannot be told from one still waiting its turn, and
# re-sending the whole backlog would multiply the load exactly when the consumer is behind.
RELAY_SCRIPT = """
if redis.call('LLEN', KEYS[1]) > 0 then return -1 end
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local resent = 0
for _, id in ipairs(due) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload == false or redis.call('EXISTS', ARGV[4] .. id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
  else
    redis.call('LPUSH', KEYS[1], payload)
    redis.call('ZADD', KEYS[3], ARGV[2], id)
    resent = resent + 1
  end
end
return resent
"""


class OutboxRelay:
    """Re-sends a queue's messages that no consumer settled within `redeliver_after` seconds.

    Runs as a thread in every worker of the queue's service; its state is all in Redis, so killing it loses
    nothing, and the script is atomic, so two relays of one queue never re-send the same message twice at once."""

    def __init__(self, queue: str, settings: BusSettings, client: redis.Redis) -> None:
        self.queue, self.settings, self.redis = queue, settings, client
        self._script = client.register_script(RELAY_SCRIPT)
        self._stop = threading.Event()
        self.resent = 0

    def sweep(self) -> int:
        """One pass; returns how many messages were re-sent (-1: skipped, the queue has a backlog)."""
        now = time.time()
        resent = self._script(
            keys=[self.queue, Keys.outbox(self.queue), Keys.outbox_schedule(self.queue)],
            args=[now, now + self.settings.redeliver_after, 500, Keys.inbox(self.queue, "")],
        )
        if resent > 0:
            self.resent += resent
            self.redis.incrby(Keys.relayed(self.queue), resent)
            log.warning("outbox relay: re-sent %d unsettled message(s) to %s", resent, self.queue)
        return resent

    def run(self) -> None:
        interval = max(0.5, self.settings.redeliver_after / 4)
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except redis.RedisError as exc:
                log.warning("outbox relay for %s: %s (next pass in %.1fs)", self.queue, exc, interval)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"outbox-relay-{self.queue}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def scan_documents(client: redis.Redis, service: str, collection: str) -> dict[str, dict[str, Any]]:
    """Every document of one collection (for status, checks and tests; never on a hot path)."""
    prefix = Keys.document(service, collection, "")
    found: dict[str, dict[str, Any]] = {}
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        batch = keys[start : start + 500]
        with client.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.hget(key, "d")
            for key, data in zip(batch, pipe.execute()):
                if data is not None:
                    found[key.decode()[len(prefix) :]] = json.loads(data)
    return found


TAKEN_KEY_OPTION = "shop_taken_key"
"""The transport option that names a worker node's taken list (`Keys.taken`); kombu ignores options it does not
know, the consuming channel reads it."""


def make_celery_app(name: str, settings: BusSettings, service: str | None = None, node: str = "") -> Celery:
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    transport_options: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        # kombu sweeps for abandoned messages every interval x throttle seconds (10 x 10 by default): a message
        # whose worker was killed would wait 100 s past its visibility timeout. Sweep a few times per timeout.
        "unacked_restore_interval": max(1, int(settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
        # One Redis list per queue instead of kombu's four (one per priority step): nothing here uses priorities,
        # and a single list is what lets a worker take a message with one atomic BLMOVE (events/consumer.py).
        "priority_steps": [0],
    }
    if service:
        transport_options.update(Keys.unacked(service, node))
        transport_options[TAKEN_KEY_OPTION] = Keys.taken(service, node)
    if _kombu_ssl(settings):
        app.conf.broker_use_ssl = _kombu_ssl(settings)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_consumer="events.consumer:DeadLetteringConsumer",
    )
    if settings.broker_is_amqp:  # broker choice: none of the Redis transport's emulation knobs apply on RabbitMQ
        from events.amqp_bus import configure_celery

        configure_celery(app, settings)
    return app


def make_publisher(settings: BusSettings, app: Celery | None = None) -> RedisPublisher:
    """The publisher for the configured broker (broker choice): messages queued by the commit script itself on Redis,
    or committed to the outbox and then sent with publisher confirms on RabbitMQ."""
    if settings.broker_is_amqp:
        from events.amqp_bus import AmqpPublisher

        return AmqpPublisher(settings, app)
    return RedisPublisher(settings, app)


def consumer_queue(spec: ServiceSpec, settings: BusSettings) -> Queue:
    """The queue a service's worker consumes (broker choice). On Redis every message is addressed to it through the
    default exchange; on RabbitMQ it is the declared durable queue (the same arguments, or RabbitMQ refuses it)."""
    if settings.broker_is_amqp:
        from events.amqp_bus import Topology

        return Topology(settings).queue(spec)
    return Queue(spec.queue, Exchange(""), routing_key=spec.queue)
