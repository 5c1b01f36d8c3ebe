"""The Redis bus: topology, transactional publishing, and the celery consumer runtime.

Design (see the broker notes in the README for the pitfalls each choice avoids):

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
  inbox and the versions of what the handler read, then writes the documents, the inbox mark and the LPUSH of every
  outgoing message. This is the transactional outbox without a relay: the queue *is* the outbox, so "state saved
  but event never published" cannot happen, and nothing is left for a relay to lose. The price is that a service's
  store lives beside the broker; a service on its own SQL database would need the classic outbox table + relay.
* Consumption. Each service runs a celery worker (acks_late, reject_on_worker_lost, per-service unacked keys and
  visibility timeout). Every message is verified (signature, size, JSON, schema, known type) before any handler
  runs; rejects, poison messages and exhausted retries go to the service's dead-letter store with their reason.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import redis
from celery import Celery
from celery.exceptions import Reject, Retry
from celery.worker.consumer import Consumer
from kombu import Connection, Exchange, Queue, binding
from kombu.exceptions import OperationalError

from events.bus import BoundHandler, ServiceSpec, TransientError, bind_handlers
from events.envelope import Envelope, RejectedMessage, Sealed, open_envelope, seal
from events.observability import MessageObserver
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, UnitOfWork

log = logging.getLogger(__name__)

EVENTS_EXCHANGE = Exchange("shop.events", type="direct", durable=True)
UNROUTABLE = "unroutable"


# --------------------------------------------------------------------------------------------------------------------
# Key names: the one place that says where things live in Redis.
# --------------------------------------------------------------------------------------------------------------------
class Keys:
    @staticmethod
    def document(service: str, collection: str, key: str) -> str:
        return f"shop:{service}:{collection}:{key}"

    @staticmethod
    def inbox(service: str, event_id: UUID | str) -> str:
        return f"shop:{service}:inbox:{event_id}"

    @staticmethod
    def deliveries(service: str, event_id: UUID | str) -> str:
        return f"shop:{service}:deliveries:{event_id}"

    @staticmethod
    def dead_letters(service: str) -> str:
        return f"shop:deadletter:{service}"

    @staticmethod
    def outbox(queue: str) -> str:
        return f"shop:outbox:{queue}"

    @staticmethod
    def outbox_schedule(queue: str) -> str:
        return f"shop:outbox:{queue}:due"

    @staticmethod
    def routes(exchange: str, event_type: str) -> str:
        """On RabbitMQ: the queues this shop bound to `event_type` (a record for display; the broker routes)."""
        return f"shop:routes:{exchange}:{event_type}"

    @staticmethod
    def event_log() -> str:
        return "shop:eventlog"

    @staticmethod
    def relayed(queue: str) -> str:
        return f"shop:stats:{queue}:relayed"

    @staticmethod
    def retries(service: str) -> str:
        return f"shop:stats:{service}:retries"

    @staticmethod
    def metrics(service: str) -> str:
        return f"shop:metrics:{service}"

    @staticmethod
    def unacked(service: str, node: str) -> dict[str, str]:
        """kombu's bookkeeping of delivered-but-unacknowledged messages, one set per worker *node*. Per service, so
        one service's visibility timeout never applies to another's; per node, so a worker restarted under its
        name can take back at once what its killed predecessor held (see `ServiceRuntime.take_back_unacked`)."""
        return {
            "unacked_key": f"shop:{service}:unacked:{node}",
            "unacked_index_key": f"shop:{service}:unacked_index:{node}",
            "unacked_mutex_key": f"shop:{service}:unacked_mutex:{node}",
        }


def in_flight(client: redis.Redis, service: str) -> int:
    """Messages of `service` delivered to some worker and not yet acknowledged."""
    return sum(client.hlen(key) for key in client.scan_iter(match=Keys.unacked(service, "*")["unacked_key"]))


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
# already atomic with the state: kombu's Redis transport takes a message off the list (BRPOP) and records it as
# unacknowledged in a *second* command, so a worker killed, or a Redis killed, between the two loses the message.
# The outbox relay (`OutboxRelay`) re-sends what stayed unsettled too long; the consumer's inbox absorbs the copy.
#
# Every published event is also appended to the event log (a capped Redis stream): the history that `shop trace`
# follows and that a new service can replay to build its projections.
#
# KEYS: inbox, deliveries counter, own outbox, own outbox schedule ('' for all four when the work has no cause),
#       n document keys, then three keys per delivery: target, target's outbox, target's outbox schedule
#       (outbox keys '' when the target is a dead-letter hash; target '' when the message only goes into the outbox,
#       as on RabbitMQ, where the publisher sends it after the commit), then the event log.
# ARGV: n, inbox ttl, cause event id, when to check on the new deliveries, event log length, n expected versions,
#       n documents, then per delivery: payload, id; then per published event: type, correlation id, envelope,
#       signature.
# Returns 1 committed, 0 already handled, -1 a document changed since it was read.
COMMIT_SCRIPT = """
local n = tonumber(ARGV[1])
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, n do
  local current = redis.call('HGET', KEYS[4 + i], 'v') or '0'
  if current ~= ARGV[5 + i] then return -1 end
end
for i = 1, n do
  redis.call('HSET', KEYS[4 + i], 'v', tonumber(ARGV[5 + i]) + 1, 'd', ARGV[5 + n + i])
end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], '1', 'EX', ARGV[2]) end
if KEYS[2] ~= '' then redis.call('DEL', KEYS[2]) end
if KEYS[3] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
end
local a = 6 + 2 * n
for k = 5 + n, #KEYS - 1, 3 do
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
    ) -> int:
        """The atomic step. `envelopes` are published (routed, queued, logged); `cause` = (service, event id) being
        handled; `writes` = (key, expected version, json); `extra_deliveries` go to one queue and are not logged."""
        sealed = [(envelope, seal(envelope, self.settings.key)) for envelope in envelopes]
        deliveries = [d for envelope, s in sealed for d in self.deliveries_for(s, envelope)]
        deliveries += extra_deliveries
        service, event_id = cause or ("", "")
        keys = [
            Keys.inbox(service, event_id) if cause else "",
            Keys.deliveries(service, event_id) if cause else "",
            Keys.outbox(service) if cause else "",
            Keys.outbox_schedule(service) if cause else "",
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


# --------------------------------------------------------------------------------------------------------------------
# Dead letters
# --------------------------------------------------------------------------------------------------------------------
def dead_letter_record(
    service: str, reason: str, detail: str, message: Sealed | dict[str, Any] | str | None, attempts: int
) -> dict[str, Any]:
    if isinstance(message, Sealed):
        message = message.model_dump()
    return {
        "id": uuid4().hex[:12],
        "service": service,
        "reason": reason,
        "detail": detail[:4000],
        "attempts": attempts,
        "dead_at": datetime.now(UTC).isoformat(),
        "message": message,
    }


class DeadLetterStore:
    """One Redis hash per service: id -> record with the reason, attempts and the original message, so a dead
    letter can be read, understood and replayed after the fix."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, service: str, reason: str, detail: str, message: Any, attempts: int) -> dict[str, Any]:
        """Store the dead letter and settle the message's outbox entry in one step, so the relay stops re-sending
        what is now parked here."""
        record = dead_letter_record(service, reason, detail, message, attempts)
        event_id = _event_id_of(message.get("envelope")) if isinstance(message, dict) else None
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(Keys.dead_letters(service), record["id"], json.dumps(record))
            if event_id:
                pipe.hdel(Keys.outbox(service), event_id)
                pipe.zrem(Keys.outbox_schedule(service), event_id)
            pipe.execute()
        log.warning("dead-lettered %s in %s: %s %s", record["id"], service, reason, detail[:200])
        return record

    def services(self) -> list[str]:
        return sorted(key.decode().rsplit(":", 1)[1] for key in self.redis.scan_iter(match=Keys.dead_letters("*")))

    def list(self, service: str | None = None) -> list[dict[str, Any]]:
        records = []
        for name in [service] if service else self.services():
            records += [json.loads(raw) for raw in self.redis.hvals(Keys.dead_letters(name))]
        return sorted(records, key=lambda record: record["dead_at"])

    def counts(self) -> dict[str, int]:
        return {name: self.redis.hlen(Keys.dead_letters(name)) for name in self.services()}

    def get(self, record_id: str) -> dict[str, Any] | None:
        for record in self.list():
            if record["id"] == record_id:
                return record
        return None

    def remove(self, record: dict[str, Any]) -> bool:
        return bool(self.redis.hdel(Keys.dead_letters(record["service"]), record["id"]))

    def purge(self, service: str | None = None) -> int:
        names = [service] if service else self.services()
        return sum(self.redis.hlen(Keys.dead_letters(name)) for name in names) if names and self.redis.delete(
            *(Keys.dead_letters(name) for name in names)
        ) else 0

    def replay(self, record: dict[str, Any], publisher: RedisPublisher) -> str:
        """Re-inject the original signed message. Unroutable ones are routed again (a subscriber may exist now);
        others go back to the owning service's queue with a fresh delivery count."""
        message = record.get("message")
        if not isinstance(message, dict) or set(message) != {"envelope", "signature"}:
            raise ValueError(f"dead letter {record['id']} holds no replayable envelope (reason: {record['reason']})")
        sealed = Sealed.model_validate(message)
        if record["service"] == UNROUTABLE:
            envelope = Envelope.model_validate_json(sealed.envelope)
            if not publisher.router.queues_for(envelope.type):
                raise ValueError(f"still no subscriber for {envelope.type}")
            publisher.publish(envelope)
            target = ",".join(publisher.router.queues_for(envelope.type))
        else:
            event_id = _event_id_of(sealed.envelope) or f"replay-{record['id']}"
            self.redis.delete(Keys.deliveries(record["service"], event_id))
            publisher.enqueue_sealed(record["service"], sealed, event_id)
            target = record["service"]
        self.remove(record)
        return target


def _event_id_of(raw: Any) -> str | None:
    try:
        return str(json.loads(raw).get("event_id") or "") or None
    except (ValueError, AttributeError, TypeError):
        return None


# --------------------------------------------------------------------------------------------------------------------
# The consumer runtime
# --------------------------------------------------------------------------------------------------------------------
def make_celery_app(name: str, settings: BusSettings, service: str | None = None, node: str = "") -> Celery:
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    transport_options: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        # kombu sweeps for abandoned messages every interval x throttle seconds (10 x 10 by default): a message
        # whose worker was killed would wait 100 s past its visibility timeout. Sweep a few times per timeout.
        "unacked_restore_interval": max(1, int(settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
    }
    if service:
        transport_options.update(Keys.unacked(service, node))
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
        worker_consumer="events.redis_bus:DeadLetteringConsumer",
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


class ServiceRuntime:
    """Runs one service's handlers for messages delivered by celery: verify, deduplicate, handle, commit."""

    def __init__(self, spec: ServiceSpec, settings: BusSettings, node: str | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.node = node or f"{spec.name}@{socket.gethostname()}"
        self.app = make_celery_app(spec.name, settings, service=spec.name, node=self.node)
        self.consumer_queue = consumer_queue(spec, settings)
        self.app.conf.task_queues = [self.consumer_queue]
        self.app.conf.task_default_queue = self.consumer_queue.name
        self.publisher = make_publisher(settings, self.app)
        self.redis = self.publisher.redis
        self.dead_letters = DeadLetterStore(self.redis)
        self.handlers: dict[str, BoundHandler] = bind_handlers(spec, spec.dependencies(self.redis))
        self.app.shop_runtime = self  # the consumer step dead-letters through it
        self.observer = MessageObserver(spec.name)

        def handle_event(task: Any, *args: Any, **kwargs: Any) -> str:
            """The one celery task of this service. It takes anything, so that a malformed message reaches the
            dead-letter store through `handle` instead of failing inside celery and being acknowledged."""
            envelope, signature = kwargs.pop("envelope", None), kwargs.pop("signature", None)
            if args:
                kwargs["args"] = list(args)
            return self.handle(envelope, signature, kwargs, retries=task.request.retries, task=task)

        self.task = self.app.task(name=self.publisher.messages.task_name(spec.queue), bind=True)(handle_event)

    def declare(self) -> None:
        declare_topology(self.settings, [self.spec])

    def relay(self) -> OutboxRelay:
        """The thread that repairs what a crash left behind (broker choice): on Redis it re-sends messages of this
        queue nobody settled; on RabbitMQ it sends committed events the broker never confirmed."""
        if self.settings.broker_is_amqp:
            from events.amqp_bus import AmqpRelay

            return AmqpRelay(self.spec, self.settings, self.publisher)
        return OutboxRelay(self.spec.queue, self.settings, self.redis)

    def take_back_unacked(self) -> int:
        """Requeue every message this node's previous incarnation was handling when it died.

        Call before consuming. kombu would restore them only after the visibility timeout; a node name is unique
        among live workers (the supervisor and compose give each its own), so whatever is left under it belongs
        to a dead process and can go back at once, through kombu's own restore, to its one queue. Messages of a
        node that never returns are re-sent by the outbox relay."""
        keys = Keys.unacked(self.spec.name, self.node)
        tags = [tag.decode() for tag in self.redis.hkeys(keys["unacked_key"])]
        if tags:
            with self.app.connection_for_read() as connection:
                qos = connection.default_channel.qos
                for tag in tags:
                    qos.restore_by_tag(tag, leftmost=True)
            log.warning("%s: requeued %d message(s) left unacknowledged by a previous run", self.node, len(tags))
        return len(tags)

    def handle(
        self, raw: Any, signature: Any, unexpected: Mapping[str, Any] | None = None, retries: int = 0, task: Any = None
    ) -> str:
        """Returns the outcome (handled, duplicate, dead-lettered); raises celery's Retry or Reject to redeliver.
        Whatever the outcome, the message gets its one log line and its counters (`events/observability.py`)."""
        started, outcome = time.perf_counter(), "error"
        try:
            outcome = self._handle_or_requeue(raw, signature, unexpected, retries, task)
            return outcome
        except Retry:
            outcome = "retried"
            raise
        except Reject:
            outcome = "requeued"
            raise
        finally:
            self.observer.record(raw, outcome, started)

    def _handle_or_requeue(
        self, raw: Any, signature: Any, unexpected: Mapping[str, Any] | None, retries: int, task: Any
    ) -> str:
        try:
            return self._handle(raw, signature, unexpected, retries, task)
        except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
            # Store or broker unreachable: give the message back untouched. If even that fails, it stays in the
            # unacked set and returns after the visibility timeout. Acknowledging here would lose it.
            log.warning("%s: Redis unavailable (%s); requeueing the message", self.spec.name, exc)
            time.sleep(self.settings.retry_backoff)
            raise Reject(exc, requeue=True) from None

    def _handle(
        self, raw: Any, signature: Any, unexpected: Mapping[str, Any] | None, retries: int, task: Any
    ) -> str:
        message = {"envelope": raw, "signature": signature, **(unexpected or {})}
        try:
            if unexpected:
                raise RejectedMessage("malformed message", f"unexpected fields {sorted(unexpected)}")
            envelope, event = open_envelope(
                raw, signature, key=self.settings.key, max_bytes=self.settings.max_message_bytes
            )
            handler = self.handlers.get(envelope.type)
            if handler is None:
                raise RejectedMessage("no handler", f"{self.spec.name} does not handle {envelope.type}")
        except RejectedMessage as rejected:
            self.dead_letters.add(self.spec.name, rejected.reason, rejected.detail, message, attempts=1)
            return "dead-lettered"
        return self._handle_valid(envelope, event, handler, message, retries, task)

    def _handle_valid(
        self, envelope: Envelope, event: Any, handler: BoundHandler, message: dict[str, Any], retries: int, task: Any
    ) -> str:
        deliveries_key = Keys.deliveries(self.spec.name, envelope.event_id)
        redelivered = retries > 0 or bool(task is not None and (task.request.delivery_info or {}).get("redelivered"))
        if redelivered:
            # Only a message that was delivered before can be a duplicate or a poison: check and count it. A first
            # delivery skips this round trip (most messages): a duplicate is still refused by the commit's inbox
            # check, and its uncounted delivery is added below.
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.exists(Keys.inbox(self.spec.name, envelope.event_id))
                pipe.incr(deliveries_key)
                pipe.expire(deliveries_key, self.settings.inbox_ttl)
                handled_before, deliveries, _ = pipe.execute()
            if handled_before:
                self.redis.delete(deliveries_key)
                return "duplicate"
            unfinished = deliveries  # the earlier ones counted here, plus the uncounted first delivery
            if unfinished >= self.settings.max_deliveries:
                self.dead_letters.add(
                    self.spec.name,
                    "poison message",
                    f"delivered {unfinished} times without finishing (the worker died each time)",
                    message,
                    attempts=unfinished,
                )
                self.redis.delete(deliveries_key)
                return "dead-lettered"

        uow = self.publisher.unit_of_work(self.spec.name, envelope)
        try:
            handler(event, uow)
            self.failpoint("before_commit", envelope)
            uow.commit()
            self.failpoint("after_commit", envelope)
        except AlreadyHandled:
            return "duplicate"
        except (TransientError, ConcurrentUpdate) as exc:
            self.redis.delete(deliveries_key)
            if retries >= self.settings.max_retries or task is None:
                self.dead_letters.add(self.spec.name, "retries exhausted", repr(exc), message, attempts=retries + 1)
                return "dead-lettered"
            self.redis.incr(Keys.retries(self.spec.name))
            # Back to this queue only: celery would otherwise re-send to the delivery's exchange and routing key,
            # which on RabbitMQ means a copy for every subscriber of the event.
            raise task.retry(exc=exc, countdown=self.settings.retry_backoff * 2**retries, max_retries=None,
                             queue=self.consumer_queue)
        except (redis.ConnectionError, redis.TimeoutError, OperationalError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in a handler: keep the message, keep the worker
            log.exception("%s: handler for %s failed", self.spec.name, envelope.type)
            self.redis.delete(deliveries_key)
            self.dead_letters.add(
                self.spec.name, "handler error", "".join(traceback.format_exception(exc)), message, attempts=1
            )
            return "dead-lettered"
        return "handled"

    def failpoint(self, point: str, envelope: Envelope) -> None:
        """Fault injection for the crash tests: with SHOP_FAULT_INJECTION on and SHOP_CRASH_AT=<point>:<EventType>,
        the worker process dies at that point, once per event (the mark survives the crash in Redis)."""
        if not self.settings.fault_injection or self.settings.crash_at != f"{point}:{envelope.type}":
            return
        if self.redis.set(f"shop:failpoint:{self.spec.name}:{point}:{envelope.event_id}", 1, nx=True, ex=3600):
            log.warning("failpoint %s: killing %s on %s", point, self.spec.name, envelope.event_id)
            os._exit(70)


class DeadLetteringConsumer(Consumer):
    """Celery acknowledges (deletes) a message it cannot decode or that is not a known task. Dead-letter it first,
    with the raw body, so nothing malformed disappears."""

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        runtime: ServiceRuntime | None = getattr(self.app, "shop_runtime", None)
        if runtime is None:
            return
        try:
            body = message.body.decode(errors="replace") if isinstance(message.body, bytes) else message.body
        except Exception:  # noqa: BLE001
            body = repr(message.body)
        runtime.dead_letters.add(
            runtime.spec.name, reason, detail, {"raw_body": str(body)[:65536], "headers": _safe(message.headers)}, 1
        )

    def connection_for_read(self, heartbeat: Any = None) -> Any:
        """The consuming connection, with its Redis channels guarded against transport-level garbage before they
        exist (see `guard_transport`)."""
        connection = self.app.connection_for_read(heartbeat=heartbeat)
        guard_transport(connection)
        return self.ensure_connected(connection)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        self._dead_letter(message, "undecodable message", str(headers.get(UNDECODABLE_HEADER) or repr(exc)))
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "not a task message", "")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, "unknown task", repr(exc))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, "invalid task message", repr(exc))
        super().on_invalid_task(body, message, exc)


# --------------------------------------------------------------------------------------------------------------------
# Transport-level garbage (used by DeadLetteringConsumer only)
# --------------------------------------------------------------------------------------------------------------------
# kombu's Redis transport json-parses each item it BRPOPs and builds a kombu Message from it before celery sees it. An
# item that is not JSON, or JSON that is not a kombu message (no `properties`, no delivery tag, ...), raises inside
# the worker's event loop: celery logs "Unrecoverable error", the worker process exits (with status 0), and the item,
# already popped, is lost. Seen with a raw LPUSH of garbage into a service queue (tests/integration/test_bad_input.py).
# The guard checks every popped item and swaps an unusable one for a well-formed kombu message that carries the
# original bytes (base64) and the problem in a header. That message has no task header and an unregistered content
# type, so celery hands it to `DeadLetteringConsumer.on_decode_error`: dead-lettered as "undecodable message" with the
# raw item, then acknowledged like any other message (until then it sits in `unacked` as usual). Only the worker's
# consuming connection is guarded; the cost is one extra json.loads per delivered message.
UNDECODABLE_CONTENT_TYPE = "application/x-shop-undecodable"
UNDECODABLE_HEADER = "x-shop-undecodable"


def kombu_payload_problem(item: bytes | str) -> str | None:
    """Why kombu's Redis transport (and celery's dispatch) could not take this raw queue item, or None if they can."""
    import base64

    try:
        payload = json.loads(item)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return f"not JSON: {exc}"
    if not isinstance(payload, dict):
        return f"not a kombu message: a JSON {type(payload).__name__}"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "not a kombu message: no 'properties' object"
    if "delivery_tag" not in properties:
        return "not a kombu message: no 'properties.delivery_tag'"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
        return "not a kombu message: no 'properties.delivery_info' with exchange and routing_key"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "not a kombu message: 'headers' is not an object"
    if headers and "task" in headers and not isinstance(headers["task"], str):
        return "not a celery message: the 'task' header is not a string"
    encoding, body = properties.get("body_encoding"), payload.get("body")
    if body and encoding is not None:
        if encoding != "base64":
            return f"not a kombu message: unknown body_encoding {str(encoding)[:50]!r}"
        try:
            base64.b64decode(body)
        except Exception as exc:  # noqa: BLE001 - binascii.Error, TypeError, ValueError: all mean "unusable"
            return f"not a kombu message: body is not base64 ({exc})"
    return None


def undecodable_kombu_message(item: bytes | str, queue: str, problem: str) -> str:
    """A valid kombu message (JSON, as the Redis transport stores it) carrying the unusable `item` unchanged."""
    import base64

    raw = item if isinstance(item, bytes) else item.encode(errors="replace")
    return json.dumps(
        {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": "binary",
            "content-type": UNDECODABLE_CONTENT_TYPE,
            "headers": {UNDECODABLE_HEADER: problem},
            "properties": {
                "body_encoding": "base64",
                "delivery_tag": str(uuid4()),
                "delivery_info": {"exchange": "", "routing_key": queue},
                "delivery_mode": 2,
                "priority": 0,
            },
        }
    )


def guard_transport(connection: Connection) -> None:
    """Make `connection` (not yet connected) use a Redis channel whose BRPOP replies pass `kombu_payload_problem`."""
    from kombu.transport import redis as kombu_redis
    from kombu.utils.encoding import bytes_to_str
    from kombu.utils.objects import cached_property

    transport = connection.transport
    if not isinstance(transport, kombu_redis.Transport) or getattr(transport.Channel, "shop_guarded", False):
        return  # RabbitMQ validates frames itself; already guarded
    base = transport.Channel

    class GuardedChannel(base):  # type: ignore[misc, valid-type]
        shop_guarded = True

        def _create_client(self, asynchronous: bool = False) -> Any:
            """One synchronous client per channel instead of kombu's new `redis.Redis` per delivery and per ack
            (each costs ~60 us with redis-py 8; they share one pool anyway, so reusing the client changes nothing
            else). Measured: kombu's fetch + ack per message from ~530 to ~320 us of CPU."""
            if asynchronous:
                return super()._create_client(asynchronous=True)
            client = self.__dict__.get("_shop_sync_client")
            if client is None:
                client = self.__dict__["_shop_sync_client"] = super()._create_client()
            return client

        @cached_property
        def client(self) -> Any:
            client = self._create_client(asynchronous=True)
            parse_response = client.parse_response

            def guarded_parse_response(connection: Any, command_name: Any, **options: Any) -> Any:
                response = parse_response(connection, command_name, **options)
                if command_name == "BRPOP" and response:
                    key, item = response
                    problem = kombu_payload_problem(item)
                    if problem is not None:
                        queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
                        log.warning("unusable item in queue %s, handing it to the dead-letter path: %s", queue, problem)
                        response = (key, undecodable_kombu_message(item, queue, problem))
                return response

            client.parse_response = guarded_parse_response
            return client

    transport.Channel = GuardedChannel

def _safe(headers: Any) -> Any:
    try:
        json.dumps(headers)
        return headers
    except (TypeError, ValueError):
        return repr(headers)
