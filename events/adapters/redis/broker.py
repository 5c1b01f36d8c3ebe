"""Redis as the broker: routing, the atomic step that queues messages, and the relay of each queue's outbox.

The atomic step (`COMMIT_SCRIPT`) is shared by the broker and the store beside it (store.py): documents with their
version check, the inbox mark, the LPUSH of every outgoing message with its outbox copy, the event log entry and the
ack of the message being handled, in one Lua script. A plain publish (`RedisBroker.send`) is the same script with
no documents and no cause.

Every message pushed to a queue is also kept in that queue's outbox until its consumer settles it (the ack, or the
commit that includes the ack). Why a copy when the push is atomic with the state: a message taken by a worker node
that never comes back (scaled away, renamed) would wait in that node's taken list forever; `QueueRelay` re-sends what
stayed unsettled past `redeliver_after`, and the consumer's inbox absorbs the copy. Every published event is also
appended to the event log (a capped stream): the history `shop trace` follows and `shop replay` feeds projections.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from events import tracing
from events.adapters.redis import kombu_channel
from events.adapters.redis.keys import Keys
from events.adapters.redis.messages import MessageFactory
from events.adapters.redis.scripts import lua_script
from events.adapters.redis.topology import Router
from events.deadletters import UNROUTABLE, unroutable_record
from events.messaging import OutgoingMessage, SendResult
from events.settings import BusSettings

log = logging.getLogger(__name__)

# KEYS: inbox, deliveries counter, the cause's queue outbox, its schedule ('' for all four when the work has no cause),
#       the taken list ('' when nothing is acknowledged here), n document keys, then three keys per delivery: target,
#       target's outbox, target's outbox schedule (outbox keys '' when the target is a dead-letter hash; target '' for
#       an outbox entry only), then the event log.
# ARGV: n, inbox ttl, cause event id, when to check on the new deliveries, event log length, the taken message to
#       acknowledge, n expected versions, n documents, then per delivery: payload, id; then per logged event:
#       type, correlation id, envelope, signature, trace id ('' when not traced).
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
for e = a, #ARGV, 5 do
  redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', ARGV[5], '*', 'type', ARGV[e], 'correlation_id', ARGV[e + 1],
             'envelope', ARGV[e + 2], 'signature', ARGV[e + 3], 'trace', ARGV[e + 4])
end
return 1
"""


ScriptCall = tuple[list[str], list[str | int | float | bytes]]
"""A script's KEYS and ARGV."""


@dataclass(frozen=True)
class Delivery:
    """One write of the atomic step: a message into a queue (with its outbox copy), a dead letter into a dead-letter
    hash (`queue` None), or an outbox entry only (`target` '')."""

    target: str
    payload: str
    id: str
    queue: str | None = None

    @property
    def keys(self) -> list[str]:
        if self.queue is None:
            return [self.target, "", ""]
        return [self.target, Keys.outbox(self.queue), Keys.outbox_schedule(self.queue)]


@dataclass(frozen=True)
class Cause:
    """The message being handled: whose inbox marks it, and the queue it came from (its outbox copy is settled)."""

    inbox: str
    """'' when the inbox is kept elsewhere (a store of its own, committed already): only the queue copy is settled"""
    event_id: str
    queue: str | None = None


class AtomicStep:
    """Runs COMMIT_SCRIPT. Returns 1 committed, 0 already handled, -1 a document changed since it was read."""

    def __init__(self, client: redis.Redis, settings: BusSettings) -> None:
        self.redis, self.settings = client, settings
        self._script = lua_script(client, COMMIT_SCRIPT)

    def run(self, call: ScriptCall) -> int:
        """`call`: the KEYS and ARGV `arguments` built."""
        keys, args = call
        return int(self._script(keys=keys, args=args))

    def arguments(
        self,
        *,
        writes: Sequence[tuple[str, str, str]] = (),
        deliveries: Sequence[Delivery] = (),
        logged: Sequence[OutgoingMessage] = (),
        cause: Cause | None = None,
        acknowledge: tuple[str, bytes] | None = None,
    ) -> ScriptCall:
        """COMMIT_SCRIPT's KEYS and ARGV, for `run` (or for a commit sent without waiting: pipelined.py). `writes` =
        (key, expected version, json); `acknowledge` = (taken list, message as taken)."""
        keys = [
            Keys.inbox(cause.inbox, cause.event_id) if cause and cause.inbox else "",
            Keys.deliveries(cause.inbox, cause.event_id) if cause and cause.inbox else "",
            Keys.outbox(cause.queue) if cause and cause.queue else "",
            Keys.outbox_schedule(cause.queue) if cause and cause.queue else "",
            acknowledge[0] if acknowledge else "",
            *(key for key, _, _ in writes),
            *(key for delivery in deliveries for key in delivery.keys),
            Keys.event_log(),
        ]
        args: list[str | int | float | bytes] = [
            len(writes),
            self.settings.inbox_ttl,
            cause.event_id if cause else "",
            time.time() + self.settings.redeliver_after,
            self.settings.event_log_length,
            acknowledge[1] if acknowledge else "",
            *(version for _, version, _ in writes),
            *(document for _, _, document in writes),
            *(value for delivery in deliveries for value in (delivery.payload, delivery.id)),
            *(value for m in logged
              for value in (m.type, m.correlation_id, m.envelope, m.signature, tracing.trace_id(m.headers) or "")),
        ]
        return keys, args


class RedisBroker:
    """Messages as Redis lists: routed in Python, pushed (with outbox copies) and logged in one atomic step."""

    def __init__(self, client: redis.Redis, settings: BusSettings) -> None:
        self.redis, self.settings = client, settings
        self.router = Router(settings)
        self.messages = MessageFactory(settings)
        self.step = AtomicStep(client, settings)

    def subscribers(self, event_type: str) -> list[str]:
        return self.router.queues_for(event_type)

    def deliveries(self, messages: Sequence[OutgoingMessage]) -> list[Delivery]:
        """One push per subscribed queue (or to the one queue named), or one unroutable dead letter."""
        deliveries: list[Delivery] = []
        for message in messages:
            event_id = message.id.split(":", 1)[0]
            queues = [message.queue] if message.queue else self.router.queues_for(message.type)
            if not queues:
                record = unroutable_record(message)
                deliveries.append(Delivery(Keys.dead_letters(UNROUTABLE), json.dumps(record), record["id"]))
            for queue in queues:
                key, payload = self.messages.build(queue, message, event_id)
                deliveries.append(Delivery(key, payload, event_id, queue))
        return deliveries

    def send(self, messages: Sequence[OutgoingMessage], acknowledge: object | None = None) -> SendResult:
        """All of them in one atomic step; an unroutable one is dead-lettered in that step too (so it counts as
        sent: there is nothing left for an outbox to retry). `acknowledge` = (taken list, message as taken): the
        message whose handling committed these, acknowledged in the same step as the channel's ack would (out of the
        taken list, its queue-outbox copy settled), for a store of its own that commits before it hands over."""
        taken = acknowledge if isinstance(acknowledge, tuple) else None
        task_id = kombu_channel.task_id_of(taken[1]) if taken else None
        event_id, _, queue = (task_id or "").partition(":")
        self.step.run(self.step.arguments(
            deliveries=self.deliveries(messages), logged=[m for m in messages if m.queue is None],
            cause=Cause("", event_id, queue) if queue else None, acknowledge=taken,
        ))
        return SendResult(sent=[message.id for message in messages], acknowledged=taken is not None)

    def close(self) -> None:
        self.router.close()
        self.messages.close()


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


class QueueRelay:
    """Re-sends a queue's messages that no consumer settled within `redeliver_after` seconds.

    Runs on a thread in every worker of the queue's service; its state is all in Redis, so killing it loses nothing,
    and the script is atomic, so two relays of one queue never re-send the same message twice at once."""

    def __init__(self, queue: str, client: redis.Redis, settings: BusSettings) -> None:
        self.queue, self.redis, self.settings = queue, client, settings
        self._script = lua_script(client, RELAY_SCRIPT)
        self.resent = 0

    def sweep(self) -> int:
        """One pass; returns how many messages were re-sent (-1: skipped, the queue has a backlog)."""
        now = time.time()
        resent = int(self._script(
            keys=[self.queue, Keys.outbox(self.queue), Keys.outbox_schedule(self.queue)],
            args=[now, now + self.settings.redeliver_after, 500, Keys.inbox(self.queue, "")],
        ))
        if resent > 0:
            self.resent += resent
            self.redis.incrby(Keys.relayed(self.queue), resent)
            log.warning("outbox relay: re-sent %d unsettled message(s) to %s", resent, self.queue)
        return resent
