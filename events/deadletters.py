"""Dead letters: every message that cannot be handled ends in one, with its reason, its attempts and the original
message, until it is read, replayed after a fix, or purged (`shop dlq ...`). The record's shape and the replay are
the same whichever store keeps them; each store adapter implements `DeadLetters`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import uuid4

from events.envelope import Envelope, Sealed
from events.messaging import Broker, OutgoingMessage

UNROUTABLE = "unroutable"
"""The pseudo-service of events no queue was bound to when they were published."""


@dataclass(frozen=True)
class DeadLetterLimits:
    """What a dead-letter store keeps, so a flood of huge or hostile messages cannot fill the store it shares with
    the service's state: at most `body_bytes` of a message (with its size and hash), at most `per_service` records
    (the oldest are evicted, and counted)."""

    body_bytes: int = 64 * 1024
    per_service: int = 10_000


DEFAULT_LIMITS = DeadLetterLimits()


def kept_message(message: Sealed | dict[str, Any] | str | None, body_bytes: int) -> Any:
    """The message as a dead letter keeps it: whole up to `body_bytes` (JSON-encoded), else its head, size and SHA-256
    (such a record cannot be replayed, and says so)."""
    if isinstance(message, Sealed):
        message = message.model_dump()
    raw = (message if isinstance(message, str) else json.dumps(message)).encode()
    if len(raw) <= body_bytes:
        return message
    return {"truncated": True, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
            "head": raw[:body_bytes].decode(errors="ignore")}


def dead_letter_record(
    service: str, reason: str, detail: str, message: Sealed | dict[str, Any] | str | None, attempts: int,
    limits: DeadLetterLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """The record's id is derived from the service and the event id when the message has one: a second copy of one
    event dead-lettered in one service (delivery is at least once) replaces the first record instead of adding one."""
    event_id = event_id_of(message.envelope if isinstance(message, Sealed) else
                           message.get("envelope") if isinstance(message, dict) else None)
    return {
        "id": hashlib.sha256(f"{service}:{event_id}".encode()).hexdigest()[:12] if event_id else uuid4().hex[:12],
        "service": service,
        "reason": reason,
        "detail": detail[:4000],
        "attempts": attempts,
        "dead_at": datetime.now(UTC).isoformat(),
        "message": kept_message(message, limits.body_bytes),
    }


def unroutable_record(message: OutgoingMessage) -> dict[str, Any]:
    about = message.type or f"queue {message.queue}"
    return dead_letter_record(UNROUTABLE, f"unroutable: no queue is bound to {about}", "", message.sealed, 0)


class DeadLetters(Protocol):
    def add(self, service: str, reason: str, detail: str, message: Any, attempts: int) -> dict[str, Any]: ...
    def list(self, service: str | None = None) -> list[dict[str, Any]]: ...
    def get(self, record_id: str) -> dict[str, Any] | None: ...
    def remove(self, record: dict[str, Any]) -> bool: ...
    def purge(self, service: str | None = None) -> int: ...
    def counts(self) -> dict[str, int]: ...
    def evicted(self) -> dict[str, int]:
        """service -> records evicted to keep the store within `DeadLetterLimits.per_service`."""
        ...


def event_id_of(raw: Any) -> str | None:
    try:
        return str(json.loads(raw).get("event_id") or "") or None
    except (ValueError, AttributeError, TypeError):
        return None


def replay(
    record: dict[str, Any], store: DeadLetters, broker: Broker, fresh_count: Callable[[str, str], None]
) -> str:
    """Re-inject the original signed message; returns where it went. An unroutable one is routed again (a subscriber
    may exist now); any other goes back to the owning service's queue only, with its delivery count reset
    (`fresh_count(service, event_id)`). The signature is kept: a tampered message stays rejected."""
    message = record.get("message")
    if not isinstance(message, dict) or set(message) != {"envelope", "signature"}:
        raise ValueError(f"dead letter {record['id']} holds no replayable envelope (reason: {record['reason']})")
    sealed = Sealed.model_validate(message)
    if record["service"] == UNROUTABLE:
        envelope = Envelope.model_validate_json(sealed.envelope)
        queues = broker.subscribers(envelope.type)
        if not queues:
            raise ValueError(f"still no subscriber for {envelope.type}")
        outgoing = OutgoingMessage(str(envelope.event_id), envelope.type, str(envelope.correlation_id),
                                   sealed.envelope, sealed.signature)
        target = ",".join(queues)
    else:
        event_id = event_id_of(sealed.envelope) or f"replay-{record['id']}"
        fresh_count(record["service"], event_id)
        outgoing = OutgoingMessage.to_queue(record["service"], sealed, event_id)
        target = record["service"]
    result = broker.send([outgoing])
    if outgoing.id not in result.sent:
        raise ValueError(f"the broker did not take dead letter {record['id']}")
    store.remove(record)
    return target


class CombinedDeadLetters:
    """Several services' dead letters (each in its own store) behind one `DeadLetters`, for `shop dlq` and status:
    reads go to every store, writes to the store that owns the record's service."""

    def __init__(self, owners: dict[str, DeadLetters], default: DeadLetters) -> None:
        self.owners, self.default = owners, default
        self.stores: list[DeadLetters] = list({id(store): store for store in [*owners.values(), default]}.values())

    def of(self, service: str) -> DeadLetters:
        return self.owners.get(service, self.default)

    def add(self, service: str, reason: str, detail: str, message: Any, attempts: int) -> dict[str, Any]:
        return self.of(service).add(service, reason, detail, message, attempts)

    def list(self, service: str | None = None) -> list[dict[str, Any]]:
        stores = [self.of(service)] if service else self.stores
        return sorted((record for store in stores for record in store.list(service)),
                      key=lambda record: str(record["dead_at"]))

    def get(self, record_id: str) -> dict[str, Any] | None:
        return next((record for store in self.stores if (record := store.get(record_id)) is not None), None)

    def remove(self, record: dict[str, Any]) -> bool:
        return self.of(record["service"]).remove(record)

    def purge(self, service: str | None = None) -> int:
        if service:
            return self.of(service).purge(service)
        return sum(store.purge(None) for store in self.stores)

    def counts(self) -> dict[str, int]:
        return self._sum(store.counts() for store in self.stores)

    def evicted(self) -> dict[str, int]:
        return self._sum(store.evicted() for store in self.stores)

    @staticmethod
    def _sum(each: Iterable[dict[str, int]]) -> dict[str, int]:
        totals: dict[str, int] = {}
        for counts in each:
            for name, count in counts.items():
                totals[name] = totals.get(name, 0) + count
        return totals
