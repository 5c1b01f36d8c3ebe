"""What the core asks of a broker and of a store's outbox, and the loop that joins them.

A store that cannot share a transaction with the broker (a SQL database, or Redis when the messages travel through
RabbitMQ) commits its outgoing events as outbox entries with the state; `OutboxSender` then hands them to the broker
and settles the entries the broker accepted. A crash in between leaves the entries, and the relay (`OutboxSender.sweep`
on a `Periodic` thread) sends them later; a crash after the send and before the settle sends one twice, which the
consumers' inbox absorbs. Adapters implement `Broker` and `Outbox`; they never see each other.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from events import tracing
from events.envelope import Envelope, Sealed, Signatures, seal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    """One signed event on its way out. `queue` None: to every subscriber of `type` (and into the event history);
    a queue name: a copy for that one queue only (a dead letter replayed), not logged again."""

    id: str
    type: str
    correlation_id: str
    envelope: str
    signature: str
    queue: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """Transport metadata outside the signature: the W3C trace context (events/tracing.py) when tracing is on."""

    @classmethod
    def of(cls, envelope: Envelope, keys: Signatures) -> OutgoingMessage:
        sealed = seal(envelope, keys)
        return cls(str(envelope.event_id), envelope.type, str(envelope.correlation_id), sealed.envelope,
                   sealed.signature, headers=tracing.publish_headers(envelope))

    @classmethod
    def to_queue(cls, queue: str, sealed: Sealed, event_id: str) -> OutgoingMessage:
        return cls(f"{event_id}:{queue}", "", "", sealed.envelope, sealed.signature, queue)

    @property
    def sealed(self) -> Sealed:
        return Sealed(envelope=self.envelope, signature=self.signature)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> OutgoingMessage:
        return cls(**json.loads(raw))


@dataclass
class SendResult:
    sent: list[str] = field(default_factory=list)
    """ids the broker accepted (for RabbitMQ: confirmed)"""
    unroutable: list[OutgoingMessage] = field(default_factory=list)
    """messages no queue is bound to: the caller dead-letters them (they count as settled)"""
    acknowledged: bool = False
    """the message being handled (`acknowledge`) was acknowledged in the same step"""


class Broker(Protocol):
    def send(self, messages: Sequence[OutgoingMessage], acknowledge: object | None = None) -> SendResult:
        """Deliver each message to its queues. May stop early on a broker error: what is not in the result was
        not sent and stays in the outbox. `acknowledge`: the broker's token of the message whose handling committed
        these (`UnitOfWork.acknowledgement`); a broker that can acknowledge it in the same step does (one round trip
        instead of two) and says so in the result, any other ignores it."""
        ...

    def subscribers(self, event_type: str) -> list[str]:
        """The queues an event of this type reaches."""
        ...


class Outbox(Protocol):
    def claim(self, limit: int) -> list[OutgoingMessage]:
        """Entries due for a (re)send, each claimed so that no other relay sends it in the same period."""
        ...

    def settle(self, ids: Sequence[str]) -> None:
        """The broker has these: forget them."""
        ...

    def pending(self) -> int:
        """Entries not settled yet."""
        ...


class OutboxSender:
    """Sends committed outbox entries and settles what the broker took; `sweep` is the relay's pass."""

    def __init__(
        self, outbox: Outbox, broker: Broker, dead_letter_unroutable: Callable[[OutgoingMessage], object],
        after_send: Callable[[list[OutgoingMessage]], object] | None = None,
        failpoint: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.outbox, self.broker, self.dead_letter_unroutable = outbox, broker, dead_letter_unroutable
        self.after_send = after_send
        self.failpoint = failpoint
        """fault injection only: called between the broker taking the messages and their entries being settled"""
        """what to do with the messages the broker took (the event history, when the broker keeps none)"""
        self.relayed = 0

    def send(self, messages: Sequence[OutgoingMessage]) -> int:
        """Hand committed entries to the broker; returns how many it took (or dead-lettered as unroutable)."""
        result = self._send(messages, None)
        return len(result.sent) + len(result.unroutable) if result else 0

    def hand_over(self, messages: Sequence[OutgoingMessage], acknowledge: object | None) -> bool:
        """A store's hand-over right after its commit: `send`, acknowledging the handled message in the same step
        where the broker can. True when it did (the channel's own ack then has nothing left to do)."""
        result = self._send(messages, acknowledge)
        return bool(result and result.acknowledged)

    def _send(self, messages: Sequence[OutgoingMessage], acknowledge: object | None) -> SendResult | None:
        """A broker that cannot be reached is not the committer's problem: the entries stay in the outbox for the
        relay, and the commit stands."""
        if not messages:
            return None
        try:
            result = self.broker.send(messages, acknowledge)
        except Exception as exc:  # noqa: BLE001 - whatever the broker raised, the relay will send them later
            log.warning("the broker did not take %d committed event(s) (%r); the relay will", len(messages), exc)
            return None
        for message in result.unroutable:
            self.dead_letter_unroutable(message)
        if self.after_send is not None and result.sent:
            sent = set(result.sent)
            self.after_send([message for message in messages if message.id in sent and message.queue is None])
        done = [*result.sent, *(message.id for message in result.unroutable)]
        if self.failpoint is not None and done:
            self.failpoint("after_send", "outbox", ",".join(sorted(done)))
        if done:
            self.outbox.settle(done)
        return result

    def sweep(self, limit: int = 500) -> int:
        sent = self.send(self.outbox.claim(limit))
        if sent:
            self.relayed += sent
            log.warning("outbox relay: sent %d event(s) committed but not yet taken by the broker", sent)
        return sent


class Periodic:
    """Runs `step` every `interval` seconds on a daemon thread until stopped; an error is logged and the next pass
    comes as usual (a relay must outlive a broker outage)."""

    def __init__(self, name: str, interval: float, step: Callable[[], object], errors: tuple[type[BaseException], ...],
                 at_start: bool = False):
        self.name, self.interval, self.step, self.errors, self.at_start = name, interval, step, errors, at_start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        if self.at_start:
            self._pass()
        while not self._stop.wait(self.interval):
            self._pass()

    def _pass(self) -> None:
        try:
            self.step()
        except self.errors as exc:
            log.warning("%s: %r (next pass in %.1fs)", self.name, exc, self.interval)

    def start(self) -> Periodic:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float = 0.0) -> None:
        """No further pass; `wait` seconds at most for the one running to end."""
        self._stop.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=wait)
