"""The envelope every event travels in, and the one place that turns it into bytes and back.

`seal` serializes and signs; `open_envelope` checks size, signature, JSON, envelope schema, known (type, version) and
payload schema, in that order, and raises `RejectedMessage` with a readable reason. Consumers dead-letter on that
exception instead of crashing or silently acknowledging a message they cannot use.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from events.catalog import Event, event_model


class RejectedMessage(Exception):
    """A message that must never reach a handler. `reason` is short and stable (it is counted and shown)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Envelope(BaseModel):
    """Metadata that lets anyone follow an order's journey: `correlation_id` is shared by every event of one order,
    `causation_id` names the event this one reacts to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: UUID
    type: str = Field(min_length=1, max_length=100)
    version: int = Field(ge=1)
    occurred_at: AwareDatetime
    correlation_id: UUID
    causation_id: UUID | None = None
    producer: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any]

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @classmethod
    def wrap(cls, event: Event, *, producer: str, correlation_id: UUID, causation_id: UUID | None = None) -> Envelope:
        return cls.model_construct(
            event_id=uuid4(),
            type=event.type_name,
            version=event.version,
            occurred_at=datetime.now(UTC),
            correlation_id=correlation_id,
            causation_id=causation_id,
            producer=producer,
            payload=event.model_dump(mode="json"),
        )

    def event(self) -> Event:
        """The typed payload. Raises `RejectedMessage` for an unknown (type, version) or a schema-invalid payload."""
        model = event_model(self.type, self.version)
        if model is None:
            raise RejectedMessage("unknown event type", f"{self.type} v{self.version}")
        try:
            return model.model_validate(self.payload)
        except ValidationError as exc:
            raise RejectedMessage("invalid payload", _summarize(exc)) from None


class Sealed(BaseModel):
    """What goes on the wire: the envelope's exact JSON text and an HMAC-SHA256 over it.

    Keeping the envelope as text (not a nested object) means the bytes that were signed are the bytes verified,
    whatever a serializer does to key order or number formats in between."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    envelope: str
    signature: str


def sign(raw: str, key: bytes) -> str:
    return hmac.new(key, raw.encode(), hashlib.sha256).hexdigest()


def seal(envelope: Envelope, key: bytes) -> Sealed:
    raw = envelope.model_dump_json()
    return Sealed(envelope=raw, signature=sign(raw, key))


def open_envelope(raw: Any, signature: Any, *, key: bytes, max_bytes: int) -> tuple[Envelope, Event]:
    """Verify and parse one message. Cheap checks first, so a flood of junk costs little."""
    if not isinstance(raw, str) or not isinstance(signature, str):
        raise RejectedMessage("malformed message", "expected an envelope string and a signature string")
    if len(raw) > max_bytes:
        raise RejectedMessage("message too large", f"{len(raw)} bytes > limit {max_bytes}")
    if not hmac.compare_digest(sign(raw, key), signature):
        raise RejectedMessage("bad signature")
    try:
        envelope = Envelope.model_validate_json(raw)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise RejectedMessage("invalid JSON", _summarize(exc)) from None
        raise RejectedMessage("invalid envelope", _summarize(exc)) from None
    return envelope, envelope.event()


def _summarize(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}" for error in exc.errors()[:5]
    )
