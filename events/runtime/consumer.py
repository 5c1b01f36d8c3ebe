"""What a service worker decides for each message it is handed: verify, deduplicate, handle, commit.

Every message is verified (signature, size, JSON, schema, known type) before any handler runs. A first delivery goes
straight to the handler; a redelivery is checked against the inbox and, when its worker may have died with it,
counted, so a poison message (one that kills the worker every time) is dead-lettered instead of delivered forever.
The handler's effects are committed in one atomic step by the service's store. A transient failure is retried with
backoff, then dead-lettered; a store or broker that is unreachable gives the message back untouched; anything else
is dead-lettered with its reason at once.

`ServiceRuntime.handle` returns a `Decision` and touches no broker: the celery glue (celery_worker.py) turns it into
an ack, a retry or a requeue, and unit tests drive it with fakes (tests/unit/test_runtime.py).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from events import tracing
from events.bus import BoundHandler, ServiceSpec, TransientError
from events.catalog import Event
from events.deadletters import DeadLetters
from events.envelope import Envelope, Publishers, RejectedMessage, Signatures, open_envelope
from events.runtime.observability import MessageObserver
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, Store

log = logging.getLogger(__name__)


class DeliveryCounter(Protocol):
    """Counts deliveries per event (the broker has no delivery counter of its own) and retries per service."""

    def count(self, service: str, event_id: str) -> int:
        """One more delivery of this event that did not finish; returns how many so far."""
        ...

    def forget(self, service: str, event_id: str) -> None: ...

    def count_retry(self, service: str) -> None: ...


@dataclass(frozen=True)
class Delivery:
    """One message as the broker handed it."""

    envelope: Any
    signature: Any
    unexpected: Mapping[str, Any] | None = None
    """fields of the message besides the two expected ones (the message is then malformed)"""
    retries: int = 0
    redelivered: bool = False
    may_have_died: bool = True
    """redelivered: the previous delivery may have died with its worker (False when the broker knows it did not run,
    or was given back by the task); only these count towards `max_deliveries`"""
    acknowledgement: object | None = None
    """the broker's token for this message, for a store that acknowledges it inside its commit"""
    trace: Mapping[str, str] = field(default_factory=dict)
    """the message's trace headers (W3C `traceparent`), when its producer traced it"""


@dataclass(frozen=True)
class Decision:
    outcome: str
    """handled | duplicate | dead-lettered | retried | requeued (the names the metrics count)"""
    countdown: float = 0.0
    """retried: seconds before the next attempt"""
    error: BaseException | None = None
    acknowledged: bool = False
    """the store's commit acknowledged the message already"""
    outcome_later: list[Callable[[str], object]] | None = None
    """"handled" on the strength of a commit sent but not answered yet: the callbacks appended here get the outcome
    its reply says (`UnitOfWork.outcome_later`)"""


def no_failpoint(point: str, subject: str, once_per: str) -> None:
    """Fault injection is off."""


class ServiceRuntime:
    def __init__(
        self,
        spec: ServiceSpec,
        handlers: Mapping[str, BoundHandler],
        store: Store,
        dead_letters: DeadLetters,
        counter: DeliveryCounter,
        settings: BusSettings,
        *,
        keys: Signatures,
        publishers: Publishers,
        unavailable: tuple[type[BaseException], ...] = (),
        observer: MessageObserver | None = None,
        failpoint: Callable[[str, str, str], None] = no_failpoint,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec, self.handlers, self.store = spec, handlers, store
        self.dead_letters, self.counter, self.settings = dead_letters, counter, settings
        self.keys, self.publishers = keys, publishers
        self.unavailable = unavailable
        """errors that mean "the store or broker cannot be reached now": the message is given back untouched"""
        self.observer = observer or MessageObserver(spec.name)
        self.failpoint, self.sleep = failpoint, sleep

    def handle(self, delivery: Delivery) -> Decision:
        """Whatever the decision, the message gets its one log line and its counters."""
        started = time.perf_counter()
        opened: dict[str, Envelope] = {}
        decision = Decision("error")
        with tracing.consuming(self.spec.name, delivery.trace) as span:
            try:
                decision = self._handle(delivery, opened)
            except self.unavailable as exc:
                # Acknowledging here would lose the message: give it back, after a pause so a worker does not spin.
                log.warning("%s: store or broker unavailable (%s); requeueing the message", self.spec.name, exc)
                self.sleep(self.settings.retry_backoff)
                decision = Decision("requeued", error=exc)
            finally:
                tracing.describe(span, opened.get("envelope"), decision.outcome)
                if decision.outcome_later is None:
                    self.observer.record(delivery.envelope, decision.outcome, started, opened.get("envelope"))
                else:  # logged and counted with what the commit's reply says, timed to now
                    ended = time.perf_counter()
                    decision.outcome_later.append(lambda outcome: self.observer.record(
                        delivery.envelope, outcome, started, opened.get("envelope"), ended=ended))
        return decision

    def _handle(self, delivery: Delivery, opened: dict[str, Envelope]) -> Decision:
        message = {"envelope": delivery.envelope, "signature": delivery.signature, **(delivery.unexpected or {})}
        try:
            if delivery.unexpected:
                raise RejectedMessage("malformed message", f"unexpected fields {sorted(delivery.unexpected)}")
            envelope, event = open_envelope(delivery.envelope, delivery.signature, keys=self.keys,
                                            max_bytes=self.settings.max_message_bytes, publishers=self.publishers)
            opened["envelope"] = envelope
            handler = self.handlers.get(envelope.type)
            if handler is None:
                raise RejectedMessage("no handler", f"{self.spec.name} does not handle {envelope.type}")
        except RejectedMessage as rejected:
            self.dead_letters.add(self.spec.name, rejected.reason, rejected.detail, message, attempts=1)
            return Decision("dead-lettered")
        event_id = str(envelope.event_id)
        if delivery.retries > 0 or delivery.redelivered:
            # Only a message delivered before can be a duplicate or a poison: check and count it. A first delivery
            # skips these round trips (most messages); a duplicate is still refused by the commit's inbox check.
            if self.store.unit_of_work(self.spec.name, envelope).already_handled():
                self.counter.forget(self.spec.name, event_id)
                return Decision("duplicate")
            # Each redelivery after a worker that may have died with the message counts one death; one after a
            # requeue, a retry's first delivery, or a reconnection of a worker that lived, counts none.
            counted = delivery.redelivered and delivery.may_have_died
            unfinished = self.counter.count(self.spec.name, event_id) if counted else 0
            if unfinished >= self.settings.max_deliveries:
                self.dead_letters.add(
                    self.spec.name, "poison message",
                    f"delivered {unfinished} times without finishing (the worker died each time)",
                    message, attempts=unfinished,
                )
                self.counter.forget(self.spec.name, event_id)
                return Decision("dead-lettered")
        return self._run(handler, envelope, event, delivery, message)

    def _run(
        self, handler: BoundHandler, envelope: Envelope, event: Event, delivery: Delivery, message: dict[str, Any]
    ) -> Decision:
        event_id = str(envelope.event_id)
        uow = self.store.unit_of_work(self.spec.name, envelope)
        uow.acknowledgement = delivery.acknowledgement
        try:
            handler(event, uow)
            self.failpoint("before_commit", envelope.type, event_id)
            uow.commit()
            self.failpoint("after_commit", envelope.type, event_id)
        except AlreadyHandled:
            return Decision("duplicate")
        except (TransientError, ConcurrentUpdate) as exc:
            self.counter.forget(self.spec.name, event_id)
            if delivery.retries >= self.settings.max_retries:
                self.dead_letters.add(self.spec.name, "retries exhausted", repr(exc), message,
                                      attempts=delivery.retries + 1)
                return Decision("dead-lettered")
            self.counter.count_retry(self.spec.name)
            return Decision("retried", countdown=self.settings.retry_backoff * 2**delivery.retries, error=exc)
        except self.unavailable:
            raise
        except Exception as exc:
            log.exception("%s: handler for %s failed", self.spec.name, envelope.type)
            self.counter.forget(self.spec.name, event_id)
            self.dead_letters.add(self.spec.name, "handler error", "".join(traceback.format_exception(exc)),
                                  message, attempts=1)
            return Decision("dead-lettered")
        return Decision("handled", acknowledged=uow.acknowledged, outcome_later=uow.outcome_later)
