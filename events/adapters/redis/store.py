"""A service's documents, inbox and outbox in Redis, under `shop:<service>:` (keys.py).

Two ways to commit, chosen by the bootstrap:
* beside the Redis broker (`broker` given): the commit script pushes the outgoing messages into their queues itself,
  and acknowledges the message being handled, in the same atomic step: no relay needed at that step;
* with a broker elsewhere (RabbitMQ): the script writes one outbox entry per outgoing event (`AMQP_OUTBOX`), the
  `on_commit` callback (an `OutboxSender`) sends them once committed, and `RedisOutbox` lets the relay find what a crash
  left behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis

from events.adapters.redis.broker import COMMIT_SCRIPT, AtomicStep, Cause, Delivery, RedisBroker
from events.adapters.redis.connection import text
from events.adapters.redis.keys import Keys
from events.adapters.redis.pipelined import Pending, PipelinedCommits
from events.adapters.redis.scripts import lua_script
from events.envelope import Envelope, Signatures
from events.messaging import OutgoingMessage
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, UnitOfWork

OUTBOX_QUEUE = "amqp"
"""`Keys.outbox(OUTBOX_QUEUE)`: events committed here but not yet confirmed by a broker elsewhere."""


class RedisStore:
    def __init__(
        self,
        client: redis.Redis,
        settings: BusSettings,
        keys: Signatures,
        broker: RedisBroker | None = None,
        on_commit: Callable[[list[OutgoingMessage]], object] | None = None,
    ) -> None:
        self.redis, self.settings, self.broker, self.on_commit = client, settings, broker, on_commit
        self.keys = keys
        self.step = broker.step if broker is not None else AtomicStep(client, settings)
        self.pipelined: PipelinedCommits | None = None
        """a solo worker's commits, sent without waiting for their replies (`pipeline_commits`)"""

    def pipeline_commits(self) -> PipelinedCommits:
        """From now on, the commits that acknowledge the message they handle (a worker's, beside the Redis broker) are
        sent without waiting for their replies, and every unit of work reads through the same connection, after them
        (pipelined.py). For a solo worker only: its deliveries run one at a time, in one thread."""
        if self.broker is None:
            raise ValueError("only a store beside the Redis broker acknowledges in its commit")
        self.pipelined = PipelinedCommits(self.redis, COMMIT_SCRIPT)
        return self.pipelined

    def unit_of_work(self, service: str, cause: Envelope | None = None, inbox: str | None = None) -> RedisUnitOfWork:
        return RedisUnitOfWork(self, service, cause, inbox)

    def documents(self, service: str, collection: str, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
        prefix = Keys.document(service, collection, "")
        found: dict[str, dict[str, Any]] = {}
        if keys is None:
            names = list(self.redis.scan_iter(match=f"{prefix}*", count=1000))
        else:
            names = [Keys.document(service, collection, key).encode() for key in keys]
        for start in range(0, len(names), 500):
            batch = names[start : start + 500]
            with self.redis.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.hget(key, "d")
                for key, data in zip(batch, pipe.execute(), strict=True):
                    if data is not None:
                        found[key.decode()[len(prefix) :]] = json.loads(data)
        return found

    def forget(self, service: str, collection: str, inbox: str | None = None) -> None:
        patterns = [Keys.document(service, collection, "*")]
        if inbox is not None:
            patterns.append(Keys.inbox(inbox, "*"))
        for pattern in patterns:
            for batch in _batches(self.redis.scan_iter(match=pattern, count=1000), 500):
                self.redis.delete(*batch)

    def deliveries(self, messages: Sequence[OutgoingMessage]) -> list[Delivery]:
        if self.broker is not None:
            return self.broker.deliveries(messages)
        return [Delivery("", message.to_json(), message.id, OUTBOX_QUEUE) for message in messages]


class RedisUnitOfWork(UnitOfWork):
    def __init__(
        self, store: RedisStore, service: str, cause: Envelope | None = None, inbox: str | None = None
    ) -> None:
        super().__init__(service, cause, inbox)
        self._store = store
        self._versions: dict[tuple[str, str], str] = {}

    def get_json(self, collection: str, key: str) -> str | bytes | None:
        document = Keys.document(self.service, collection, key)
        pipelined = self._store.pipelined
        version, data = pipelined.call("HMGET", document, "v", "d") if pipelined else self._store.redis.hmget(
            document, "v", "d")
        self._versions[(collection, key)] = text(version) if version else "0"
        return data

    def already_handled(self) -> bool:
        if self.cause is None:
            return False
        inbox = Keys.inbox(self.inbox, self.cause.event_id)
        pipelined = self._store.pipelined
        return bool(pipelined.call("EXISTS", inbox) if pipelined else self._store.redis.exists(inbox))

    def commit(self) -> None:
        store = self._store
        messages = [OutgoingMessage.of(envelope, store.keys) for envelope in self.outbox]
        beside_broker = store.broker is not None
        settles_queue_copy = beside_broker and self.inbox == self.service  # not a replay's own inbox
        acknowledge = self.acknowledgement if beside_broker and isinstance(self.acknowledgement, tuple) else None
        writes = [(Keys.document(self.service, collection, key), self._versions.get((collection, key), "0"), document)
                  for (collection, key), document in self._writes.items()]
        deliveries = store.deliveries(messages)
        cause = Cause(self.inbox, str(self.cause.event_id), self.service if settles_queue_copy else None) \
            if self.cause else None
        call = store.step.arguments(writes=writes, deliveries=deliveries, logged=messages, cause=cause,
                                    acknowledge=acknowledge)
        if store.pipelined is not None and acknowledge is not None and settles_queue_copy:
            # The script acknowledges the message only if it commits; its reply is read later (pipelined.py).
            pending = Pending(acknowledge[0], acknowledge[1], self.service)
            store.pipelined.commit(*call, pending)
            self.acknowledged, self.outcome_later = True, pending.outcome
            self._committed()
            return
        outcome = store.step.run(call)
        if outcome == 0:
            raise AlreadyHandled(str(self.cause.event_id if self.cause else ""))
        if outcome == -1:
            raise ConcurrentUpdate(", ".join(f"{c}/{k}" for c, k in self._writes))
        self.acknowledged = acknowledge is not None
        self._committed()
        if store.on_commit is not None and messages:
            store.on_commit(messages)


# An entry is claimed by pushing its due time forward, in one script: two relays never send one entry in the same
# period, and an entry whose send failed comes due again later.
CLAIM_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, id in ipairs(due) do
  local payload = redis.call('HGET', KEYS[1], id)
  if payload == false then
    redis.call('ZREM', KEYS[2], id)
  else
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    table.insert(claimed, payload)
  end
end
return claimed
"""


class RedisOutbox:
    """The entries a store committed for a broker elsewhere (`Outbox` for the relay)."""

    def __init__(self, client: redis.Redis, settings: BusSettings) -> None:
        self.redis, self.settings = client, settings
        self._claim = lua_script(client, CLAIM_SCRIPT)

    def claim(self, limit: int) -> list[OutgoingMessage]:
        now = time.time()
        payloads = self._claim(keys=[Keys.outbox(OUTBOX_QUEUE), Keys.outbox_schedule(OUTBOX_QUEUE)],
                               args=[now, now + self.settings.redeliver_after, limit])
        return [OutgoingMessage.from_json(payload) for payload in payloads]

    def settle(self, ids: Sequence[str]) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(Keys.outbox(OUTBOX_QUEUE), *ids)
            pipe.zrem(Keys.outbox_schedule(OUTBOX_QUEUE), *ids)
            pipe.execute()

    def pending(self) -> int:
        return int(self.redis.hlen(Keys.outbox(OUTBOX_QUEUE)))


def _batches(keys: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
