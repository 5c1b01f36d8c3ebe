"""The unit of work: what a handler may touch, and the promise that it all happens or none of it does.

A handler reads documents of its own service, writes documents, and publishes events. `commit` makes the writes, the
outgoing events and the "this incoming event is handled" mark (the inbox) one atomic step. That single step is what
makes redelivery harmless (the inbox) and a crash between "state saved" and "event published" impossible (the
outgoing events are committed with the state, as in a transactional outbox). Every store adapter implements this
contract, and one contract test holds each of them to it (tests/contract/test_unit_of_work.py).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID

from events.catalog import Event
from events.envelope import Envelope


class ConcurrentUpdate(Exception):
    """Another delivery changed a document this unit of work read; the message is retried with fresh state."""


class AlreadyHandled(Exception):
    """The incoming event was handled by a concurrent delivery; nothing of this unit of work was written."""


class UnitOfWork(abc.ABC):
    def __init__(self, service: str, cause: Envelope | None = None, inbox: str | None = None) -> None:
        self.service = service
        self.cause = cause
        self.inbox = inbox or service
        """Whose inbox records the cause as handled: the service's own, except for a replay of history, which
        keeps its own record (`shop.replay`) so that events the service handled live are still replayed."""
        self.outbox: list[Envelope] = []
        self.committed: list[Envelope] = []
        self.acknowledgement: object | None = None
        """A broker's token for the message being handled, set by the worker runtime: a store that lives beside the
        broker acknowledges the message in the commit itself and sets `acknowledged`."""
        self.acknowledged = False
        self.outcome_later: list[Callable[[str], object]] | None = None
        """Set by a commit whose outcome is known only later (a pipelined commit, events/adapters/redis/pipelined.py):
        whoever needs the outcome appends a callback, called once with "handled", "duplicate" or "requeued"."""
        self._writes: dict[tuple[str, str], str] = {}
        """(collection, key) -> the document's JSON text, as it will be stored"""

    # -- reads and writes of this service's own documents --------------------------------------------------------
    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        """The stored document, or None. Its version is remembered for the optimistic check at commit."""
        text = self.get_json(collection, key)
        return None if text is None else dict(json.loads(text))

    @abc.abstractmethod
    def get_json(self, collection: str, key: str) -> str | bytes | None:
        """The stored document as the JSON text it was stored as, or None, for a model to parse in one step
        (`Collection`); its version is remembered as by `get`."""

    def put(self, collection: str, key: str, document: dict[str, Any]) -> None:
        self.put_json(collection, key, json.dumps(document, separators=(",", ":")))

    def put_json(self, collection: str, key: str, document: str) -> None:
        """`document`: a JSON object's text, stored as it is (a model's `model_dump_json()`)."""
        self._writes[(collection, key)] = document

    # -- events ----------------------------------------------------------------------------------------------------
    def publish(self, event: Event, *, correlation_id: UUID | None = None) -> Envelope:
        """Stage an event. It carries the cause's correlation id (the order's journey) unless one is given."""
        if correlation_id is None:
            if self.cause is None:
                raise ValueError("an event published outside a handler needs a correlation_id")
            correlation_id = self.cause.correlation_id
        envelope = Envelope.wrap(
            event,
            producer=self.service,
            correlation_id=correlation_id,
            causation_id=self.cause.event_id if self.cause else None,
        )
        self.outbox.append(envelope)
        return envelope

    # -- the atomic step -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def already_handled(self) -> bool:
        """True when the cause was handled before (a redelivery); the handler must not run again."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Write documents, inbox mark and outgoing events at once. Raises ConcurrentUpdate or AlreadyHandled.
        Afterwards `committed` holds the events that were published."""

    def _committed(self) -> None:
        """Bookkeeping shared by every store once its commit succeeded."""
        self.committed, self.outbox, self._writes = self.outbox, [], {}


class Store(Protocol):
    """Where a service keeps its documents, inbox and outbox: what a wiring hands the handlers and the APIs."""

    def unit_of_work(self, service: str, cause: Envelope | None = None, inbox: str | None = None) -> UnitOfWork: ...

    def documents(self, service: str, collection: str, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Every document of one collection, or those of `keys` that exist (status, audits, tests, the benchmark's
        poll; never a handler's read, which goes through a unit of work)."""
        ...

    def forget(self, service: str, collection: str, inbox: str | None = None) -> None:
        """Delete a collection's documents (and, if given, that inbox's marks): a projection rebuilt from history."""
        ...
