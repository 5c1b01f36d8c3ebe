"""The in-process bus: the same ServiceSpecs and handlers, dispatched in one process without a broker.

Used by unit tests (and, with a store of its own, by the monolith). Events committed by a unit of work are queued in
process and delivered, one handler at a time, to every service subscribed to their type, each with its own inbox,
exactly like the Redis bus but without serialization or network hops. Payloads still go through the same envelope
round trip (`json` -> model), so a contract violation fails here as it would on Redis.

`InMemoryBus.commit` dispatches synchronously, so a unit test sees the whole saga when commit returns.
`DispatchingInMemoryBus` (the monolith) queues instead and dispatches on its own thread, so a request is answered
before the saga runs, as it is over Redis.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from events.bus import BoundHandler, ServiceSpec, TransientError, bind_handlers
from events.envelope import Envelope, RejectedMessage
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, UnitOfWork

log = logging.getLogger(__name__)


class InMemoryStore:
    """Documents, versions and inbox marks of every service, in dicts. For unit tests and the in-process bus.

    Documents are kept as JSON text, as in the other stores: a reader always gets its own copy (a handler cannot
    change stored state by mutating what it read), and a long-running process does not hold millions of small dicts
    for the garbage collector to walk."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str, str], tuple[int, str]] = {}
        self.inbox: set[tuple[str, str]] = set()

    def unit_of_work(self, service: str, cause: Envelope | None = None, inbox: str | None = None) -> InMemoryUnitOfWork:
        return InMemoryUnitOfWork(self, service, cause, inbox)

    def documents(self, service: str, collection: str, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
        wanted = None if keys is None else set(keys)
        return {
            key: json.loads(document)
            for (owner, name, key), (_, document) in self.records.items()
            if owner == service and name == collection and (wanted is None or key in wanted)
        }

    def forget(self, service: str, collection: str, inbox: str | None = None) -> None:
        for owner, name, key in [k for k in self.records if k[:2] == (service, collection)]:
            del self.records[(owner, name, key)]
        if inbox is not None:
            self.inbox = {mark for mark in self.inbox if mark[0] != inbox}


class InMemoryUnitOfWork(UnitOfWork):
    """Same contract as every other store; commit is atomic because the in-process bus commits under its lock."""

    def __init__(
        self, store: InMemoryStore, service: str, cause: Envelope | None = None, inbox: str | None = None
    ) -> None:
        super().__init__(service, cause, inbox)
        self.store = store
        self._read_versions: dict[tuple[str, str], int] = {}

    def get_json(self, collection: str, key: str) -> str | None:
        version, document = self.store.records.get((self.service, collection, key), (0, None))
        self._read_versions[(collection, key)] = version
        return document

    def already_handled(self) -> bool:
        return self.cause is not None and (self.inbox, str(self.cause.event_id)) in self.store.inbox

    def commit(self) -> None:
        if self.already_handled():
            raise AlreadyHandled(str(self.cause.event_id) if self.cause else "")
        for collection, key in self._writes:
            current, _ = self.store.records.get((self.service, collection, key), (0, None))
            if current != self._read_versions.get((collection, key), 0):
                raise ConcurrentUpdate(f"{collection}/{key}")
        for (collection, key), document in self._writes.items():
            current, _ = self.store.records.get((self.service, collection, key), (0, None))
            self.store.records[(self.service, collection, key)] = (current + 1, document)
        if self.cause is not None:
            self.store.inbox.add((self.inbox, str(self.cause.event_id)))
        self._committed()


class InMemoryBus:
    def __init__(self, store: InMemoryStore | None = None, max_retries: int = 4) -> None:
        self.store: InMemoryStore = store or InMemoryStore()
        self.max_retries = max_retries
        self._subscribers: dict[str, list[tuple[str, BoundHandler]]] = {}
        self._pending: deque[Envelope] = deque()
        self._lock = threading.RLock()
        self.published: list[Envelope] = []
        self.dead_letters: list[dict[str, Any]] = []
        self.unroutable: list[Envelope] = []
        self.on_handled: Callable[[str, Envelope], None] | None = None

    def subscribe(self, spec: ServiceSpec, dependencies: Mapping[str, Any]) -> None:
        for type_name, handler in bind_handlers(spec, dependencies).items():
            self._subscribers.setdefault(type_name, []).append((spec.name, handler))

    def unit_of_work(self, service: str, cause: Envelope | None = None, inbox: str | None = None) -> UnitOfWork:
        return self.store.unit_of_work(service, cause, inbox)

    def commit(self, uow: UnitOfWork) -> None:
        """Commit and dispatch what it published, synchronously, until the process is quiet."""
        with self._lock:
            uow.commit()
            self._pending.extend(uow.committed)
            self.drain()

    def drain(self) -> None:
        while self._pending:
            envelope = self._pending.popleft()
            for service, handler in self._route(envelope):
                self._deliver(service, handler, envelope)

    def redeliver(self, envelope: Envelope) -> None:
        """Deliver a published event again to every subscriber (what a broker may do after a crash), then dispatch
        whatever that publishes: a duplicate must have no second effect."""
        with self._lock:
            for service, handler in self._subscribers.get(envelope.type, []):
                self._deliver(service, handler, envelope)
        self.drain()

    def _route(self, envelope: Envelope) -> list[tuple[str, BoundHandler]]:
        """Record the event as published and return its subscribers; an event nobody handles is kept as
        unroutable, as the Redis bus dead-letters it."""
        self.published.append(envelope)
        subscribers = self._subscribers.get(envelope.type, [])
        if not subscribers:
            self.unroutable.append(envelope)
        return subscribers

    def _deliver(self, service: str, handler: BoundHandler, envelope: Envelope) -> None:
        for attempt in range(self.max_retries + 1):
            retryable = self._attempt(service, handler, envelope, attempt)
            if retryable is None:
                return
        self._dead_letter(service, envelope, "retries exhausted", repr(retryable), self.max_retries + 1)

    def _attempt(self, service: str, handler: BoundHandler, envelope: Envelope, attempt: int) -> Exception | None:
        """One delivery of `envelope` to one subscriber. Returns the error when it is worth retrying; None when the
        delivery is over (handled, a duplicate, or dead-lettered). The commit takes the bus lock, so a dispatcher
        thread and request threads committing at the same time cannot interleave inside one commit."""
        uow = self.unit_of_work(service, envelope)
        if uow.already_handled():
            return None
        try:
            handler(Envelope.model_validate_json(envelope.model_dump_json()).event(), uow)
            with self._lock:
                uow.commit()
                self._pending.extend(uow.committed)
        except AlreadyHandled:
            return None
        except (TransientError, ConcurrentUpdate) as exc:
            return exc
        except RejectedMessage as exc:
            self._dead_letter(service, envelope, exc.reason, exc.detail, attempt + 1)
            return None
        except Exception as exc:
            log.exception("%s failed on %s", service, envelope.type)
            self._dead_letter(service, envelope, "handler error", repr(exc), attempt + 1)
            return None
        if self.on_handled:
            self.on_handled(service, envelope)
        return None

    def _dead_letter(self, service: str, envelope: Envelope, reason: str, detail: str, attempts: int) -> None:
        self.dead_letters.append(
            {"service": service, "reason": reason, "detail": detail, "attempts": attempts, "envelope": envelope}
        )


@dataclass(frozen=True)
class _Delivery:
    service: str
    handler: BoundHandler
    envelope: Envelope
    attempt: int = 0


class DispatchingInMemoryBus(InMemoryBus):
    """The in-process bus with a queue and one dispatcher thread, for a long-running process (the monolith).

    `commit` stores the unit of work and queues its events, then returns: the caller (an HTTP request) is answered
    at once, as it is by the Redis bus, and the saga continues on the dispatcher thread. Handlers run one at a time
    and *outside* the bus lock, so a slow handler (a slow gateway) never holds up a request that only commits.
    A transient failure is retried after `retry_backoff * 2**attempt` seconds, the Redis bus's policy, by putting
    the delivery back on a timer instead of sleeping: one failing subscriber does not stall every other event.

    Like everything in process, queued events and retries live in memory: `stop` drains them (bounded by its
    timeout) so a graceful shutdown loses nothing; a killed process loses them.
    """

    def __init__(
        self,
        store: InMemoryStore | None = None,
        max_retries: int = 4,
        retry_backoff: float = 0.2,
        keep_published: int = 10_000,
    ) -> None:
        super().__init__(store, max_retries)
        self.retry_backoff = retry_backoff
        # A process that runs for hours must not keep every envelope it ever dispatched; the recent ones are enough
        # to inspect.
        self.published = deque(maxlen=keep_published)  # type: ignore[assignment]
        self._ready = threading.Condition(self._lock)
        self._deliveries: deque[_Delivery] = deque()
        self._retries: list[tuple[float, int, _Delivery]] = []
        self._retry_sequence = itertools.count()
        self._in_progress = 0
        self._stopping = False
        self._abandon = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._dispatch_forever, name="event-dispatcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> int:
        """Finish what is queued (retries included), then stop the dispatcher. Returns how many deliveries were
        abandoned because `timeout` ran out (0 after a clean drain)."""
        if self._thread is None:
            return 0
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        self._thread.join(timeout)
        with self._ready:
            left = self.backlog()
            self._abandon = True
            self._ready.notify_all()
        self._thread.join(1.0)
        self._thread = None
        if left:
            log.warning("stopped with %d deliveries not done: they are lost with this process", left)
        return left

    def commit(self, uow: UnitOfWork) -> None:
        """Store the unit of work and queue its events; the dispatcher delivers them."""
        with self._ready:
            uow.commit()
            self._pending.extend(uow.committed)
            self._ready.notify()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every queued event and retry is handled (the dispatcher does the work)."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self.backlog():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.backlog()} deliveries still pending after {timeout}s")
                self._ready.wait(min(remaining, 0.1))

    def backlog(self) -> int:
        """Events not yet fanned out, deliveries waiting or running, and retries scheduled."""
        with self._lock:
            return len(self._pending) + len(self._deliveries) + len(self._retries) + self._in_progress

    def _dispatch_forever(self) -> None:
        while True:
            with self._ready:
                delivery = self._next_delivery()
                if delivery is None:
                    return
                self._in_progress += 1
            try:
                retryable = self._attempt(delivery.service, delivery.handler, delivery.envelope, delivery.attempt)
                if retryable is not None:
                    self._retry_later(delivery, retryable)
            except Exception:
                log.exception("dispatcher failed on %s", delivery.envelope.type)
            finally:
                with self._ready:
                    self._in_progress -= 1
                    self._ready.notify_all()

    def _retry_later(self, delivery: _Delivery, error: Exception) -> None:
        if delivery.attempt >= self.max_retries:
            self._dead_letter(
                delivery.service, delivery.envelope, "retries exhausted", repr(error), delivery.attempt + 1
            )
            log.error("%s: %s dead-lettered after %d attempts: %r", delivery.service, delivery.envelope.type,
                      delivery.attempt + 1, error)
            return
        due = time.monotonic() + self.retry_backoff * 2**delivery.attempt
        retry = _Delivery(delivery.service, delivery.handler, delivery.envelope, delivery.attempt + 1)
        with self._ready:
            heapq.heappush(self._retries, (due, next(self._retry_sequence), retry))

    def _next_delivery(self) -> _Delivery | None:
        """The next delivery to run, waiting for one; None once stopping and nothing is left (or it is abandoned).
        Called with the lock held."""
        while not self._abandon:
            now = time.monotonic()
            while self._retries and self._retries[0][0] <= now:
                self._deliveries.append(heapq.heappop(self._retries)[2])
            while self._pending:
                envelope = self._pending.popleft()
                subscribers = self._route(envelope)
                self._deliveries.extend(_Delivery(service, handler, envelope) for service, handler in subscribers)
            if self._deliveries:
                return self._deliveries.popleft()
            if self._stopping and not self._retries:
                return None
            self._ready.wait(self._retries[0][0] - now if self._retries else None)
        return None
