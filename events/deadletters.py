"""The dead-letter store: where every message that cannot be handled ends, with its reason, attempts and the
original message, until it is read, replayed after a fix, or purged (`shop dlq ...`)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import redis

from events.envelope import Envelope, Sealed
from events.keys import Keys

if TYPE_CHECKING:
    from events.redis_bus import RedisPublisher

log = logging.getLogger(__name__)

UNROUTABLE = "unroutable"

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


