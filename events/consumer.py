"""The consumer runtime: how one service's handlers run inside a celery worker.

Every message is verified (signature, size, JSON, schema, known type) before any handler runs; a first delivery goes
straight to the handler, a redelivery is checked against the inbox and counted (poison messages); the handler's
effects are committed in one atomic step (events/redis_bus.py); rejects, poison messages and exhausted retries go to
the service's dead-letter store with their reason. Celery is configured for at-least-once delivery: acks_late,
reject_on_worker_lost; on Redis each worker node takes messages atomically into its own taken list, which is also
its record of what it holds unacknowledged (see "The consuming channel" below).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from time import monotonic
from typing import Any
from uuid import uuid4

import redis
from celery.exceptions import Reject, Retry
from celery.worker.consumer import Consumer
from kombu import Connection
from kombu.exceptions import OperationalError

from events.bus import BoundHandler, ServiceSpec, TransientError, bind_handlers
from events.deadletters import DeadLetterStore
from events.envelope import Envelope, RejectedMessage, open_envelope
from events.keys import Keys
from events.observability import MessageObserver
from events.redis_bus import (
    TAKEN_KEY_OPTION,
    OutboxRelay,
    consumer_queue,
    declare_topology,
    make_celery_app,
    make_publisher,
)
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate

log = logging.getLogger(__name__)

TAKEN: dict[str, tuple[str, bytes] | None] = {}
"""Delivery tag -> (queue, message as taken) for every message this worker's consuming channel took and has not yet
acknowledged: what removes it from the node's taken list, or puts it back (see `guard_transport`). None once the
commit script has removed it: the channel's ack then has nothing left to do in Redis. One consuming channel per
worker process, so one registry."""


def in_flight(client: redis.Redis, service: str) -> int:
    """Messages of `service` taken by some worker and not yet acknowledged."""
    return sum(client.hlen(key) for key in client.scan_iter(match=Keys.unacked(service, "*")["unacked_key"])) + sum(
        client.llen(key) for key in client.scan_iter(match=Keys.taken(service, "*"))
    )


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
        self.taken_key = Keys.taken(spec.name, self.node)

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
        """Requeue every message this node's previous incarnation recorded in kombu's unacked set (a consumer
        without a taken list, see `put_back_taken`) and was handling when it died.

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

    def put_back_taken(self) -> int:
        """Return to the queue, marked redelivered, every message this node took and never acknowledged (it died, or
        lost Redis, meanwhile). Runs on every (re)connection of the consuming channel, before it consumes: whatever
        the previous connection held will never be acknowledged through it. Oldest first, at the end the queue is
        read from."""
        TAKEN.clear()
        items = self.redis.lrange(self.taken_key, 0, -1)  # newest first
        for item in items:
            put_back(self.redis, self.taken_key, self.consumer_queue.name, item)
        if items:
            log.warning("%s: put back %d message(s) taken and never acknowledged", self.node, len(items))
        return len(items)

    def handle(
        self, raw: Any, signature: Any, unexpected: Mapping[str, Any] | None = None, retries: int = 0, task: Any = None
    ) -> str:
        """Returns the outcome (handled, duplicate, dead-lettered); raises celery's Retry or Reject to redeliver.
        Whatever the outcome, the message gets its one log line and its counters (`events/observability.py`)."""
        started, outcome = time.perf_counter(), "error"
        opened: dict[str, Envelope] = {}  # the envelope once verified, so the log line need not parse it again
        try:
            outcome = self._handle(raw, signature, unexpected, retries, task, opened)
            return outcome
        except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
            # Store or broker unreachable: give the message back untouched. If even that fails, it stays in the
            # node's taken list and goes back when the worker reconnects. Acknowledging here would lose it.
            outcome = "requeued"
            log.warning("%s: Redis unavailable (%s); requeueing the message", self.spec.name, exc)
            time.sleep(self.settings.retry_backoff)
            raise Reject(exc, requeue=True) from None
        except Retry:
            outcome = "retried"
            raise
        except Reject:
            outcome = "requeued"
            raise
        finally:
            self.observer.record(raw, outcome, started, opened.get("envelope"))

    def _handle(
        self,
        raw: Any,
        signature: Any,
        unexpected: Mapping[str, Any] | None,
        retries: int,
        task: Any,
        opened: dict[str, Envelope],
    ) -> str:
        message = {"envelope": raw, "signature": signature, **(unexpected or {})}
        try:
            if unexpected:
                raise RejectedMessage("malformed message", f"unexpected fields {sorted(unexpected)}")
            envelope, event = open_envelope(
                raw, signature, key=self.settings.key, max_bytes=self.settings.max_message_bytes
            )
            opened["envelope"] = envelope
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
        tag = self._tag_to_acknowledge_in_commit(task)
        if tag:
            uow.acknowledgement = (self.taken_key, TAKEN[tag][1])
        try:
            handler(event, uow)
            self.failpoint("before_commit", envelope.type, str(envelope.event_id))
            uow.commit()
            if tag:
                TAKEN[tag] = None
            self.failpoint("after_commit", envelope.type, str(envelope.event_id))
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

    def _tag_to_acknowledge_in_commit(self, task: Any) -> str | None:
        """The delivery tag, when the ack can be folded into the commit: a message this process took into its taken
        list (Redis broker, solo pool: the task runs in the process whose channel took it and will skip its own
        ack; elsewhere the channel just acks)."""
        if task is None or self.settings.broker_is_amqp or self.settings.worker_pool != "solo":
            return None
        tag = (getattr(task.request, "properties", None) or {}).get("delivery_tag")
        return tag if TAKEN.get(tag) is not None else None

    def failpoint(self, point: str, subject: str, once_per: str) -> None:
        """Fault injection for the crash tests: with SHOP_FAULT_INJECTION on and SHOP_CRASH_AT=<point>:<subject>
        (an event type, or the service for `after_take`), the worker process dies at that point, once per
        `once_per` (an event id, a message): the mark survives the crash in Redis."""
        if not self.settings.fault_injection or self.settings.crash_at != f"{point}:{subject}":
            return
        if self.redis.set(f"shop:failpoint:{self.spec.name}:{point}:{once_per}", 1, nx=True, ex=3600):
            log.warning("failpoint %s: killing %s on %s", point, self.spec.name, once_per)
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
        runtime: ServiceRuntime | None = getattr(self.app, "shop_runtime", None)
        connection = self.app.connection_for_read(heartbeat=heartbeat)
        guard_transport(connection, runtime.failpoint if runtime and runtime.settings.fault_injection else None)
        connection = self.ensure_connected(connection)
        if runtime is not None and not runtime.settings.broker_is_amqp:
            runtime.put_back_taken()
        return connection

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
# The consuming channel (used by DeadLetteringConsumer only): how a worker takes messages off its Redis list
# --------------------------------------------------------------------------------------------------------------------
# Atomic take. kombu BRPOPs a message and records it in the unacked hash in a second command: a worker killed, or a
# Redis killed, between the two loses the message (seen in the chaos run: one injected message, with no outbox copy
# to re-send, vanished). Here the take is `BLMOVE queue -> taken list` (`Keys.taken`, one list per worker node), and
# that list *is* the record of what the node holds unacknowledged: the ack is an LREM (folded into the commit script
# when the handler commits), a reject or a channel close moves the message back to its queue in one MULTI. So a
# message is always in exactly one list, and a delivery costs one round trip less than kombu's take-then-record.
# Whatever a node left in its taken list goes back to the queue, flagged redelivered, when the node (re)connects
# (`ServiceRuntime.put_back_taken`); messages of a node that never returns are re-sent by the outbox relay. kombu's
# visibility timeout does not apply to taken messages: a slow handler is never handed its message a second time.
# Needs Redis 6.2.
#
# Garbage. kombu json-parses each item it takes and builds a kombu Message from it before celery sees it. An item
# that is not JSON, or JSON that is not a kombu message (no `properties`, no delivery tag, ...), raises inside the
# worker's event loop: celery logs "Unrecoverable error", the worker process exits (with status 0), and the item,
# already popped, is lost. Seen with a raw LPUSH of garbage into a service queue (tests/integration/test_bad_input.py).
# The guard checks every taken item and swaps an unusable one for a well-formed kombu message that carries the
# original bytes (base64) and the problem in a header. That message has no task header and an unregistered content
# type, so celery hands it to `DeadLetteringConsumer.on_decode_error`: dead-lettered as "undecodable message" with the
# raw item, then acknowledged like any other message (until then it sits in the taken list as usual). The cost is one
# extra json.loads per delivered message.
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


def put_back(client: Any, taken_key: str, queue: str, item: bytes, leftmost: bool = False) -> None:
    """Move one taken message back to its queue, in one MULTI, flagged as redelivered as kombu flags a restored
    message (the runtime counts redeliveries to stop poison messages). An item that is not a kombu message goes
    back as it was: the guard dead-letters it when it is taken again."""
    try:
        payload = json.loads(item)
        payload["headers"]["redelivered"] = True
        payload["properties"]["delivery_info"]["redelivered"] = True
        restored: bytes | str = json.dumps(payload)
    except (ValueError, TypeError, KeyError):
        restored = item
    with client.pipeline() as pipe:
        pipe.lrem(taken_key, 1, item)
        (pipe.lpush if leftmost else pipe.rpush)(queue, restored)
        pipe.execute()


def guard_transport(connection: Connection, failpoint: Callable[[str, str, str], None] | None = None) -> None:
    """Make `connection` (not yet connected) use the consuming channel described above: atomic take, checked items,
    acks folded into the commit, one reused client."""
    from kombu.transport import redis as kombu_redis
    from kombu.transport import virtual
    from kombu.utils.encoding import bytes_to_str
    from kombu.utils.objects import cached_property

    transport = connection.transport
    if not isinstance(transport, kombu_redis.Transport) or getattr(transport.Channel, "shop_guarded", False):
        return  # RabbitMQ validates frames itself; already guarded
    base = transport.Channel

    class TakenListQoS(base.QoS):  # type: ignore[misc, name-defined]
        """kombu's ack emulation, with the node's taken list as the record of what is unacknowledged: nothing to
        write when a message arrives (the BLMOVE put it there), one LREM to ack it (none when the commit did)."""

        def append(self, message: Any, delivery_tag: str) -> None:
            taken = self.channel.__dict__.pop("_shop_taken", None)
            if taken is None:
                return super().append(message, delivery_tag)
            TAKEN[delivery_tag] = taken
            virtual.QoS.append(self, message, delivery_tag)

        def ack(self, delivery_tag: str) -> None:
            if delivery_tag not in TAKEN:
                return super().ack(delivery_tag)
            taken = TAKEN.pop(delivery_tag)
            if taken is not None:  # None: the commit script removed it already
                with self.channel.conn_or_acquire() as client:
                    client.lrem(self.channel.shop_taken_key, 1, taken[1])
            virtual.QoS.ack(self, delivery_tag)

        def reject(self, delivery_tag: str, requeue: bool = False) -> None:
            if delivery_tag not in TAKEN:
                return super().reject(delivery_tag, requeue=requeue)
            if not requeue:
                return self.ack(delivery_tag)
            self.restore_by_tag(delivery_tag, leftmost=True)
            virtual.QoS.ack(self, delivery_tag)

        def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
            """What kombu calls for every unacknowledged message when the channel closes, and a reject with
            requeue above."""
            if tag not in TAKEN:
                return super().restore_by_tag(tag, client=client, leftmost=leftmost)
            taken = TAKEN.pop(tag)
            if taken is not None:
                with self.channel.conn_or_acquire(client) as client:
                    put_back(client, self.channel.shop_taken_key, taken[0], taken[1], leftmost=leftmost)

    class GuardedChannel(base):  # type: ignore[misc, valid-type]
        shop_guarded = True
        QoS = TakenListQoS
        _shop_moving_from: str | None = None

        @property
        def shop_taken_key(self) -> str | None:
            return self.connection.client.transport_options.get(TAKEN_KEY_OPTION)

        def _brpop_start(self, timeout: float | None = None) -> None:
            """BLMOVE the queue's oldest message into this node's taken list, where kombu would BRPOP it: the take
            and its record cannot be split by a crash. Only for one queue with one priority list (a service
            worker); anything else keeps kombu's BRPOP."""
            keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps
                    for queue in self._queue_cycle.consume(len(self.active_queues))]
            if len(keys) != 1 or not self.shop_taken_key or self.global_keyprefix:
                self._shop_moving_from = None
                return super()._brpop_start(timeout)
            self._shop_moving_from = keys[0]
            self._in_poll = self.client.connection
            self._brpop_sent_at = monotonic()
            wait = self.brpop_timeout if timeout is None else timeout
            self.client.connection.send_command("BLMOVE", keys[0], self.shop_taken_key, "RIGHT", "LEFT", wait or 0)

        def _create_client(self, asynchronous: bool = False) -> Any:
            """One synchronous client per channel instead of kombu's new `redis.Redis` per delivery and per ack
            (each costs ~60 us with redis-py 8, timed with timeit; they share one pool anyway, so reusing the
            client changes nothing else)."""
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
                if command_name != "BRPOP":
                    return parse_response(connection, command_name, **options)
                self.__dict__.pop("_shop_taken", None)
                source = self._shop_moving_from
                if source is None:
                    response = parse_response(connection, command_name, **options)
                else:  # answered as kombu expects from BRPOP: (key, item)
                    item = parse_response(connection, "BLMOVE", **options)
                    response = None if item is None else (source.encode(), item)
                    if item is not None:
                        self.__dict__["_shop_taken"] = (source, item)
                        if failpoint is not None:  # fault injection only
                            failpoint("after_take", source, hashlib.sha1(bytes(item)).hexdigest())
                if response:
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
