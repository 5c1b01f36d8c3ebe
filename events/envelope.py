"""The envelope every event travels in, and the one place that turns it into bytes and back.

`seal` serializes and signs as the envelope's producer; `open_envelope` checks size, JSON, the producer's signature,
envelope schema, known (type, version), payload schema and that the producer may publish that type, in that order, and
raises `RejectedMessage` with a readable reason. Consumers dead-letter on that exception instead of crashing or
silently acknowledging a message they cannot use.

Signatures are per service (`Signatures`, implemented in events/adapters/ed25519): each service signs with its own
private key, every consumer holds the public keys, so a service can speak only for itself; and the allow-list
(`ServiceSpec.publishes`) says which service may speak of what, so a valid signature on an event that is not the
signer's to publish is still refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
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


class Signatures(Protocol):
    """Signs as the services whose private keys this process holds; verifies any service whose public key it holds."""

    def sign(self, signer: str, data: bytes) -> str:
        """Raises KeyError when this process holds no private key of `signer`."""
        ...

    def verify(self, signer: str, data: bytes, signature: str) -> bool:
        """Raises KeyError for a signer whose public key is unknown."""
        ...


class Sealed(BaseModel):
    """What goes on the wire: the envelope's exact JSON text and its producer's signature over it.

    Keeping the envelope as text (not a nested object) means the bytes that were signed are the bytes verified,
    whatever a serializer does to key order or number formats in between."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    envelope: str
    signature: str


def seal(envelope: Envelope, keys: Signatures) -> Sealed:
    """Serialize and sign as the envelope's producer."""
    raw = envelope.model_dump_json()
    return Sealed(envelope=raw, signature=keys.sign(envelope.producer, raw.encode()))


Publishers = Mapping[str, frozenset[str]]
"""event type -> the services allowed to publish it (`ServiceSpec.publishes`)."""


def open_envelope(
    raw: Any, signature: Any, *, keys: Signatures, max_bytes: int, publishers: Publishers | None = None
) -> tuple[Envelope, Event]:
    """Verify and parse one message. Cheap checks first, so a flood of junk costs little. `publishers`: the
    allow-list; None accepts any known producer (tools reading their own history)."""
    if not isinstance(raw, str) or not isinstance(signature, str):
        raise RejectedMessage("malformed message", "expected an envelope string and a signature string")
    if len(raw) > max_bytes:
        raise RejectedMessage("message too large", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        claimed = json.loads(raw)
    except ValueError as exc:
        raise RejectedMessage("invalid JSON", str(exc)[:200]) from None
    producer = claimed.get("producer") if isinstance(claimed, dict) else None
    if not isinstance(producer, str):
        raise RejectedMessage("invalid envelope", "producer: missing or not a string")
    try:
        authentic = keys.verify(producer, raw.encode(), signature)
    except KeyError:
        raise RejectedMessage("unknown producer", f"no public key for {producer[:100]!r}") from None
    if not authentic:
        raise RejectedMessage("bad signature", f"not signed by {producer[:100]}")
    try:
        envelope = Envelope.model_validate(claimed)
    except ValidationError as exc:
        raise RejectedMessage("invalid envelope", _summarize(exc)) from None
    event = envelope.event()
    if publishers is not None and producer not in publishers.get(envelope.type, frozenset()):
        raise RejectedMessage("not its event", f"{envelope.type} from {producer}: not its event")
    return envelope, event


def _summarize(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}" for error in exc.errors()[:5]
    )
