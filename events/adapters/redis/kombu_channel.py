"""The ONLY module that touches kombu's private API: the Redis transport a service worker consumes with, and how a
publisher renders a message exactly as kombu's Redis transport would store it.

It is a kombu transport of its own (`TRANSPORT`, given to celery as `broker_transport`), a subclass of kombu's Redis
`Transport` whose channel overrides four private methods. At import it checks the kombu version and every private name
it relies on, and fails loudly if they changed: a kombu upgrade must be re-verified here, never break silently.

Atomic take. kombu BRPOPs a message and records it in the unacked hash in a second command: a worker killed, or a
Redis killed, between the two loses the message. Here the take is `BLMOVE queue -> taken list` (one list per worker
node, named by the transport option `TAKEN_KEY_OPTION`), and that list *is* the record of what the node holds
unacknowledged: the ack removes the message (an LREM, plus the queue's outbox copy; or inside the store's commit, see
`taken_message`), a reject or a channel close moves it back to its queue in one MULTI. So a message is always in
exactly one list, and a delivery costs one round trip less than kombu's take-then-record. Whatever a node left in its
taken list goes back to its queue, flagged redelivered, when the node (re)connects (`put_back`). kombu's visibility
timeout does not apply to taken messages: a slow handler is never handed its message a second time. Needs Redis 6.2.

Batched take. The BLMOVE is followed, in the same write, by LMOVEs up to the prefetch count: with a backlog one round
trip takes several messages, each moved into the taken list atomically like the first, and the worker hands them to
celery one after the other (nil replies cost nothing when the queue is empty). The acknowledgements of the messages
handled since the last take ride ahead of the BLMOVE in that same write. A message put back by a node that knows its
delivery did not die with the worker (a requeue, the rest of a batch whose delivery failed, a reconnection within the
same process) is marked so (`put_back`, `MAY_HAVE_DIED_HEADER`): the runtime does not count it towards poison.

Garbage. kombu json-parses each item it takes and builds a Message from it before celery sees it; an item that is not
JSON, or not a kombu message, raises inside the worker's event loop, the worker exits and the popped item is lost.
The channel checks every taken item and swaps an unusable one for a well-formed kombu message that carries the
original bytes and the problem in a header, which celery hands to its decode-error path (dead-lettered with the raw
item by the runtime).

Redis at its memory limit. With `noeviction` Redis refuses every command that may grow memory (BLMOVE, LPUSH, any
MULTI) with an OOM error, which kombu treats as unrecoverable: the worker exits. Here a take that meets it waits and
tries again (nothing was taken), the ack runs without MULTI (its deletions are allowed), a consumer (re)declaring its
queue counts it without MULTI, a put-back (refused, or discarded at EXEC) waits until Redis takes it again, and
kombu's sweep of its own unacked hash skips a pass. The worker stays up and resumes by itself once memory is freed.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from time import monotonic
from typing import Any
from uuid import uuid4

import kombu
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.transport.virtual.base import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

log = logging.getLogger(__name__)

TESTED_KOMBU = "5.7."
"""The kombu minor this module was verified against (pyproject pins the same range)."""
_PRIVATE_NAMES: dict[type, tuple[str, ...]] = {
    kombu_redis.Channel: ("_brpop_start", "_brpop_read", "_q_for_pri", "_create_client", "_put", "conn_or_acquire",
                          "_flush_brpop_reauth", "_get_message_priority", "_in_poll", "_brpop_sent_at",
                          "priority_steps", "global_keyprefix", "QoS", "_size"),
    kombu_redis.Transport: ("_deliver",),
    kombu_redis.QoS: ("append", "ack", "reject", "restore_by_tag", "restore_visible"),
    virtual.QoS: ("append", "ack"),
    virtual.Channel: ("basic_publish", "prepare_message"),
}


def _check_kombu() -> None:
    problems = [f"kombu {kombu.__version__} is not {TESTED_KOMBU}x"] if not kombu.__version__.startswith(
        TESTED_KOMBU) else []
    problems += [f"{cls.__module__}.{cls.__name__}.{name} is gone"
                 for cls, names in _PRIVATE_NAMES.items() for name in names if not hasattr(cls, name)]
    if problems:
        raise ImportError(
            "events.adapters.redis.kombu_channel relies on kombu internals that changed: " + "; ".join(problems)
            + ". Re-verify this module against the installed kombu before running workers on it."
        )


_check_kombu()

TAKEN_KEY_OPTION = "shop_taken_key"
"""The transport option that names a worker node's taken list; kombu ignores options it does not know."""
BEFORE_TAKE_OPTION = "shop_before_take"
"""The transport option with a callable run before each take, when the worker is about to wait for messages (a
store's pipelined commits read their replies then)."""
OUTBOX_KEY_OPTION = "shop_outbox_key"
"""The transport option with the key pattern of a queue's outbox (`{queue}` is replaced): the ack settles the copy."""
SOLO_POOL_OPTION = "shop_solo_pool"
"""The transport option that says the worker runs each task inside the delivery (celery's solo pool): a message it
gives back (a requeue) did not die with it."""
MAY_HAVE_DIED_HEADER = "shop_may_have_died"
"""Set by `put_back`: whether the delivery that ends with this put-back may have died with its worker. False when
the node knows it did not (never handed to the task, or given back by it): the runtime then does not count it
towards a poison message's deliveries. Absent (kombu's own restore, another broker): it may have."""
UNDECODABLE_CONTENT_TYPE = "application/x-shop-undecodable"
UNDECODABLE_HEADER = "x-shop-undecodable"

_TAKEN: dict[str, tuple[str, bytes] | None] = {}
"""Delivery tag -> (queue, message as taken) for every message this process's consuming channel took and has not yet
acknowledged. None once the store's commit removed it from the taken list. One consuming channel per worker process
(solo pool), so one registry."""
_ACKS: list[tuple[str, bytes]] = []
"""(queue, message as taken) acknowledged by the worker and not yet by Redis: sent ahead of the next take, in the
same write (a pipeline), so an ack costs no round trip of its own (celery itself acknowledges on the next turn of its
event loop). Lost with the process or the connection, an ack only means the message goes back to its queue when the
node reconnects (`put_back`) and the consumer's inbox refuses the duplicate."""

after_take: Callable[[str, bytes], None] | None = None
"""Fault injection only: called with (queue, item) right after a take (the crash tests kill the worker there)."""

TAKE_BATCH_MAX = 16
"""Most messages one take moves into the taken list (the BLMOVE and the LMOVEs that follow it in one write)."""
OUT_OF_MEMORY_PAUSE = 0.5
"""Seconds a take waits after Redis refused it for lack of memory."""
PUT_BACK_PATIENCE = 120.0
"""Seconds a put-back keeps trying while Redis refuses it for lack of memory; past that the message stays in the
taken list (put back when the node reconnects; its queue-outbox copy is re-sent by the relay)."""
sleep: Callable[[float], None] = time.sleep


class _OutOfMemory:
    """Logs once when Redis starts refusing writes and once when it takes them again, not once per attempt."""

    since: float | None = None

    @classmethod
    def refused(cls, what: str, exc: Exception) -> None:
        if cls.since is None:
            cls.since = monotonic()
            log.warning("Redis is at its memory limit (%s refused: %s); waiting for memory to be freed", what, exc)

    @classmethod
    def accepted(cls) -> None:
        if cls.since is not None:
            log.warning("Redis takes writes again after %.1f s", monotonic() - cls.since)
            cls.since = None


def taken_message(delivery_tag: str | None) -> bytes | None:
    """The message as taken, for a store that acknowledges it inside its own commit (then call `acknowledged`)."""
    entry = _TAKEN.get(delivery_tag) if delivery_tag else None
    return entry[1] if entry else None


def acknowledged(delivery_tag: str) -> None:
    """The store's commit removed the message from the taken list: the channel's ack has nothing left to do."""
    if delivery_tag in _TAKEN:
        _TAKEN[delivery_tag] = None


def forget_taken() -> None:
    """A (re)connecting node puts back everything its taken list holds: no tag of the old connection is acked."""
    _TAKEN.clear()
    _ACKS.clear()


def task_id_of(item: bytes | str) -> str | None:
    try:
        headers = json.loads(item).get("headers") or {}
        return str(headers.get("id")) if headers.get("id") else None
    except (ValueError, AttributeError, TypeError):
        return None


def ack_commands(taken_key: str, outbox_pattern: str | None, queue: str, item: bytes) -> list[tuple[Any, ...]]:
    """The commands that acknowledge one taken message: out of the taken list, and its queue-outbox copy settled (the
    task id is `<event id>:<queue>`). Deletions only: Redis accepts them even at its memory limit."""
    commands: list[tuple[Any, ...]] = [("LREM", taken_key, 1, item)]
    task_id = task_id_of(item)
    if outbox_pattern and task_id:
        event_id = task_id.split(":", 1)[0]
        commands += [("HDEL", outbox_pattern.format(queue=queue), event_id),
                     ("ZREM", outbox_pattern.format(queue=queue) + ":due", event_id)]
    return commands


def settle(pipe: Any, taken_key: str, outbox_pattern: str | None, queue: str, item: bytes) -> None:
    """Queue the commands that acknowledge one taken message on `pipe` (`ack_commands`)."""
    for command in ack_commands(taken_key, outbox_pattern, queue, item):
        pipe.execute_command(*command)


def acknowledge(client: Any, taken_key: str, outbox_pattern: str | None, queue: str, item: bytes) -> None:
    """Acknowledge one taken message now, in one round trip (`settle`'s commands)."""
    with client.pipeline(transaction=False) as pipe:
        settle(pipe, taken_key, outbox_pattern, queue, item)
        pipe.execute()


def put_back(client: Any, taken_key: str, queue: str, item: bytes, leftmost: bool = False,
             may_have_died: bool = True) -> None:
    """Move one taken message back to its queue, in one MULTI, flagged as redelivered as kombu flags a restored
    message, and with `may_have_died` in its `MAY_HAVE_DIED_HEADER` (the runtime counts the redeliveries whose
    worker may have died with them, to stop poison messages). An item that is not a kombu message goes back as it
    was: the channel dead-letters it when it is taken again."""
    try:
        payload = json.loads(item)
        payload["headers"]["redelivered"] = True
        payload["headers"][MAY_HAVE_DIED_HEADER] = may_have_died
        payload["properties"]["delivery_info"]["redelivered"] = True
        restored: bytes | str = json.dumps(payload)
    except (ValueError, TypeError, KeyError):
        restored = item
    deadline, pause = monotonic() + PUT_BACK_PATIENCE, 0.05
    while True:
        try:
            with client.pipeline() as pipe:
                pipe.lrem(taken_key, 1, item)
                (pipe.lpush if leftmost else pipe.rpush)(queue, restored)
                pipe.execute()
        except (redis.exceptions.OutOfMemoryError, redis.exceptions.ExecAbortError) as exc:
            if not out_of_memory(exc):
                raise
            _OutOfMemory.refused("a put-back", exc)
            if monotonic() + pause > deadline:
                log.error("gave up putting a message back to %s after %.0f s: it stays in %s until the node reconnects",
                          queue, PUT_BACK_PATIENCE, taken_key)
                return
            sleep(pause)
            pause = min(pause * 2, 1.0)
            continue
        _OutOfMemory.accepted()
        return


def out_of_memory(exc: redis.exceptions.ResponseError) -> bool:
    """Redis refused for lack of memory: a command queued in a MULTI is refused as OOM, but a transaction whose
    memory ran out between queueing and EXEC is discarded whole, as EXECABORT "... because of: OOM ..."."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in str(exc)


def kombu_payload(item: bytes | str) -> tuple[dict[str, Any], None] | tuple[None, str]:
    """A raw queue item read as kombu's Redis transport reads it (kombu's JSON, with its typed values) and None; or
    None and why kombu (or celery's dispatch) could not take it. One parse serves both."""
    try:
        payload = kombu_loads(bytes_to_str(item))
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, a typed value that is not one
        return None, f"not JSON: {exc}"
    problem = _payload_problem(payload)
    return (None, problem) if problem is not None else (payload, None)


def _payload_problem(payload: Any) -> str | None:
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


class TakenListQoS(kombu_redis.QoS):
    """kombu's ack emulation with the node's taken list as the record of what is unacknowledged: nothing to write
    when a message arrives (the BLMOVE put it there), one MULTI to ack it (nothing when the commit did)."""

    channel: TakenListChannel

    def append(self, message: Any, delivery_tag: str) -> None:
        taken, self.channel.last_taken = self.channel.last_taken, None
        if taken is None:
            return super().append(message, delivery_tag)
        _TAKEN[delivery_tag] = taken
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if delivery_tag not in _TAKEN:
            return super().ack(delivery_tag)
        taken = _TAKEN.pop(delivery_tag)
        if taken is not None:  # None: the commit acknowledged it already
            # Sent with the next take (`_brpop_start`), without MULTI, which Redis refuses at its memory limit (the
            # deletions alone it accepts). Should the node die before, or between them, the message goes back to its
            # queue (or its queue-outbox copy is re-sent by the relay) and the consumer's inbox refuses the duplicate.
            _ACKS.append(taken)
            if self.channel._moving_from is None:  # not taking with BLMOVE: no take to ride on
                self.channel.flush_acks()
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if delivery_tag not in _TAKEN:
            return super().reject(delivery_tag, requeue=requeue)
        if not requeue:
            return self.ack(delivery_tag)
        self.restore_by_tag(delivery_tag, leftmost=True)
        virtual.QoS.ack(self, delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """kombu's sweep of its unacked hash takes a lock (a SET) first, which Redis refuses at its memory limit:
        skip the pass (the next one comes) instead of letting the error stop the worker."""
        try:
            super().restore_visible(*args, **kwargs)
        except redis.exceptions.OutOfMemoryError as exc:
            _OutOfMemory.refused("kombu's unacked sweep", exc)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        """What kombu calls for every unacknowledged message when the channel closes, and a reject with requeue."""
        if tag not in _TAKEN:
            return super().restore_by_tag(tag, client=client, leftmost=leftmost)
        taken = _TAKEN.pop(tag)
        if taken is not None:
            # With the solo pool the task gave it back (a requeue) or never ran (a closing channel); with a pool of
            # child processes the child may have died running it (celery rejects the message then).
            with self.channel.conn_or_acquire(client) as redis_client:
                put_back(redis_client, self.channel.taken_key, taken[0], taken[1], leftmost=leftmost,
                         may_have_died=not self.channel.solo_pool)


class TakenListChannel(kombu_redis.Channel):
    QoS = TakenListQoS
    last_taken: tuple[str, bytes] | None = None
    _moving_from: str | None = None
    _sync_client: Any = None

    @property
    def taken_key(self) -> str:
        return str(self.connection.client.transport_options.get(TAKEN_KEY_OPTION) or "")

    @property
    def outbox_pattern(self) -> str | None:
        return self.connection.client.transport_options.get(OUTBOX_KEY_OPTION)

    @property
    def solo_pool(self) -> bool:
        return bool(self.connection.client.transport_options.get(SOLO_POOL_OPTION))

    _ack_replies = 0
    """replies of acknowledgements sent ahead of the BLMOVE, to read before its own"""
    _more_replies = 0
    """replies of the LMOVEs sent after the BLMOVE (takes ahead, up to the prefetch count), read after its own"""

    def flush_acks(self) -> None:
        """Send the pending acknowledgements now, in one round trip (when no take follows to carry them)."""
        commands = self._pending_ack_commands()
        if commands:
            with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute()

    def _pending_ack_commands(self) -> list[tuple[Any, ...]]:
        acks = list(_ACKS)
        _ACKS.clear()
        return [command for queue, item in acks
                for command in ack_commands(self.taken_key, self.outbox_pattern, queue, item)]

    def _brpop_start(self, timeout: float | None = None) -> None:
        """BLMOVE the queue's oldest message into this node's taken list, where kombu would BRPOP it, preceded in the
        same write by the acknowledgements of the messages handled since the last take. Only for one queue with one
        priority list (a service worker); anything else keeps kombu's BRPOP."""
        before_take = self.connection.client.transport_options.get(BEFORE_TAKE_OPTION)
        if before_take is not None:
            before_take()
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps
                for queue in self._queue_cycle.consume(len(self.active_queues))]
        if len(keys) != 1 or not self.taken_key or self.global_keyprefix:
            self._moving_from = None
            self.flush_acks()
            return super()._brpop_start(timeout)
        self._moving_from = keys[0]
        connection = self.client.connection
        self._in_poll = connection
        # kombu declares `_brpop_sent_at = None` and `_in_poll = False`, so mypy infers None and bool; kombu itself
        # stores a float and a connection or None in them.
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        wait = self.brpop_timeout if timeout is None else timeout
        commands = self._pending_ack_commands()
        self._ack_replies = len(commands)
        commands.append(("BLMOVE", keys[0], self.taken_key, "RIGHT", "LEFT", wait or 0))
        # Up to the prefetch count in one round trip: Redis runs these once the BLMOVE returned, so with a backlog
        # they take the next messages, each into the taken list like the first; with none they answer nil.
        self._more_replies = self._take_batch() - 1
        commands += [("LMOVE", keys[0], self.taken_key, "RIGHT", "LEFT")] * self._more_replies
        connection.send_packed_command(connection.pack_commands(commands))

    def _take_batch(self) -> int:
        """How many messages one take may move: what the QoS still allows in flight (celery's prefetch count), at
        most TAKE_BATCH_MAX; at least the one the BLMOVE waits for."""
        allowed = self.qos.can_consume_max_estimate()
        return max(1, min(TAKE_BATCH_MAX, allowed or TAKE_BATCH_MAX))

    def _brpop_read(self, **options: Any) -> bool:
        """The reply to the BLMOVE: deliver the message (or its dead-letter stand-in) as kombu delivers a BRPOP's.
        The replies of the acknowledgements sent ahead of it come first; when the BLMOVE's is not there yet, the
        take stays in flight and this is called again once it is."""
        source = self._moving_from
        if source is None:
            return bool(super()._brpop_read(**options))
        if self._ack_replies:
            connection = self.client.connection
            try:
                while self._ack_replies:
                    self._ack_replies -= 1
                    try:
                        self.client.parse_response(connection, "ACK")
                    except redis.exceptions.ResponseError as exc:  # that one reply consumed: the rest follow
                        log.warning("an acknowledgement was refused (%s): the message goes back at reconnect", exc)
                if not connection.can_read(timeout=0):
                    return False
            except self.connection_errors:
                self._ack_replies = 0
                self._in_poll = None  # type: ignore[assignment]  # kombu's untyped `_in_poll = False`, see below
                connection.disconnect()
                raise
        try:
            more, self._more_replies = self._more_replies, 0
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except redis.exceptions.OutOfMemoryError as exc:  # nothing was taken: wait, then take again
                self._read_more(more)  # refused as well, but their replies are on the connection
                _OutOfMemory.refused("a take", exc)
                sleep(OUT_OF_MEMORY_PAUSE)
                raise Empty() from None
            taken = [item, *self._read_more(more)] if item is not None else self._read_more(more)
            _OutOfMemory.accepted()
            if not taken:
                raise Empty()
            for index, item in enumerate(taken):
                try:
                    self._deliver_taken(source, item)
                except BaseException:
                    self._put_back_undelivered(source, taken[index + 1 :])
                    raise
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's untyped `_in_poll = False`, see above
            self._flush_brpop_reauth()

    def _read_more(self, replies: int) -> list[bytes]:
        """The replies of the LMOVEs that followed the BLMOVE: the messages they took (nil: the queue was empty).
        Every reply is read, whatever it is, so the connection stays in step."""
        taken = []
        connection = self.client.connection
        for _ in range(replies):
            try:
                item = self.client.parse_response(connection, "LMOVE")
            except self.connection_errors:
                connection.disconnect()
                raise
            except redis.exceptions.ResponseError as exc:  # e.g. at the memory limit: nothing taken by that one
                log.debug("a take ahead was refused: %s", exc)
                continue
            if item is not None:
                taken.append(item)
        return taken

    def _deliver_taken(self, source: str, item: bytes) -> None:
        """Hand one taken message to celery as kombu hands over a BRPOP's (or its dead-letter stand-in); with the
        solo pool its task has run, and its ack is recorded, when this returns."""
        if after_take is not None:
            after_take(source, item)
        self.last_taken = (source, item)
        payload, problem = kombu_payload(item)
        if payload is None:
            log.warning("unusable item in queue %s, handing it to the dead-letter path: %s", source, problem)
            payload = kombu_loads(undecodable_kombu_message(item, source, str(problem)))
        self._queue_cycle.rotate(source)
        self.connection._deliver(payload, source)

    def _put_back_undelivered(self, source: str, items: list[bytes]) -> None:
        """The delivery of a batch's message failed (the worker is stopping, or lost Redis): the messages taken
        with it and not handed over yet go back to their queue now, in order, or when the node reconnects."""
        try:
            with self.conn_or_acquire() as client:
                for item in reversed(items):  # each to the end takes come from: the oldest must be there last
                    put_back(client, self.taken_key, source, item, leftmost=False, may_have_died=False)
        except (*self.connection_errors, redis.exceptions.RedisError) as exc:
            log.warning("%d taken messages not put back now (%r): they go back when the node reconnects",
                        len(items), exc)

    def close(self) -> None:
        """Send what is still to acknowledge before the channel goes (a worker stopping cleanly leaves nothing
        taken); if Redis is gone, those messages go back to their queue when the node reconnects."""
        try:
            self.flush_acks()
        except (*self.connection_errors, redis.exceptions.RedisError) as exc:
            log.warning("closing with acknowledgements unsent (%r): their messages go back at reconnect", exc)
        super().close()

    def _size(self, queue: str) -> int:
        """kombu counts a queue's lists in a MULTI, which Redis refuses at its memory limit (it refuses queueing any
        command in a transaction then), so a worker (re)starting its consumer there would exit: plain LLENs, which
        Redis still answers, in one round trip."""
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for priority in self.priority_steps:
                pipe.llen(self._q_for_pri(queue, priority))
            return sum(size for size in pipe.execute() if isinstance(size, int))

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One synchronous client per channel instead of kombu's new `redis.Redis` per delivery record and per ack
        (they share one pool anyway, so reusing the client changes nothing else)."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._sync_client is None:
            self._sync_client = super()._create_client()
        return self._sync_client


class Transport(kombu_redis.Transport):
    Channel = TakenListChannel


TRANSPORT = f"{__name__}:Transport"
"""What celery's `broker_transport` names; the URL stays redis:// (or rediss://)."""


class _Rendered(Exception):
    """Raised by the rendering channel's `_put` to hand back the (list key, payload) it would have pushed."""

    def __init__(self, key: str, payload: str) -> None:
        self.key, self.payload = key, payload


class _RenderingChannel(kombu_redis.Channel):
    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        raise _Rendered(self._q_for_pri(queue, self._get_message_priority(message, reverse=False)),
                        kombu_dumps(message))


class _RenderingTransport(kombu_redis.Transport):
    Channel = _RenderingChannel


def rendering_connection(url: str, **options: Any) -> kombu.Connection:
    """A connection whose channel renders messages instead of sending them (it never talks to Redis for that)."""
    return kombu.Connection(url, transport=f"{__name__}:_RenderingTransport", **options)


def render(channel: Any, queue: str, body: bytes | str, content_type: str, content_encoding: str,
           headers: dict[str, Any], properties: dict[str, Any]) -> tuple[str, str]:
    """(Redis list key, payload) of one message addressed to `queue` through the default exchange, byte for byte as
    kombu's Redis transport would LPUSH it, so the commit script can push it inside its own atomic step."""
    prepared = channel.prepare_message(body, 0, content_type, content_encoding, headers, properties)
    try:
        channel.basic_publish(prepared, "", queue)
    except _Rendered as rendered:
        return rendered.key, rendered.payload
    raise RuntimeError("kombu published instead of rendering: the rendering channel's _put was not called")
