"""The in-process bus: the same ServiceSpecs and handlers, dispatched in one process without a broker.

Used by unit tests and by the monolith. Events committed by a unit of work are queued in process and delivered, one
handler at a time, to every service subscribed to their type, each with its own inbox, exactly like the Redis bus
but without serialization or network hops. Payloads still go through the same envelope round trip (`json` ->
model), so a contract violation fails here as it would on Redis.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from events.bus import BoundHandler, ServiceSpec, TransientError, bind_handlers
from events.envelope import Envelope, RejectedMessage
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, InMemoryStore, InMemoryUnitOfWork

log = logging.getLogger(__name__)


class InMemoryBus:
    def __init__(self, store: InMemoryStore | None = None, max_retries: int = 4) -> None:
        self.store = store or InMemoryStore()
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

    def unit_of_work(self, service: str, cause: Envelope | None = None) -> InMemoryUnitOfWork:
        return InMemoryUnitOfWork(self.store, service, cause)

    def commit(self, uow: InMemoryUnitOfWork) -> None:
        """Commit and dispatch what it published, synchronously, until the process is quiet."""
        with self._lock:
            uow.commit()
            self._pending.extend(uow.committed)
            self.drain()

    def drain(self) -> None:
        while self._pending:
            envelope = self._pending.popleft()
            self.published.append(envelope)
            subscribers = self._subscribers.get(envelope.type, [])
            if not subscribers:
                self.unroutable.append(envelope)
            for service, handler in subscribers:
                self._deliver(service, handler, envelope)

    def _deliver(self, service: str, handler: BoundHandler, envelope: Envelope) -> None:
        for attempt in range(self.max_retries + 1):
            uow = self.unit_of_work(service, envelope)
            if uow.already_handled():
                return
            try:
                handler(Envelope.model_validate_json(envelope.model_dump_json()).event(), uow)
                uow.commit()
            except AlreadyHandled:
                return
            except (TransientError, ConcurrentUpdate) as exc:
                last_error = exc
                continue
            except RejectedMessage as exc:
                self._dead_letter(service, envelope, exc.reason, exc.detail, attempt + 1)
                return
            except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the other subscribers
                log.exception("%s failed on %s", service, envelope.type)
                self._dead_letter(service, envelope, "handler error", repr(exc), attempt + 1)
                return
            self._pending.extend(uow.committed)
            if self.on_handled:
                self.on_handled(service, envelope)
            return
        self._dead_letter(service, envelope, "retries exhausted", repr(last_error), self.max_retries + 1)

    def _dead_letter(self, service: str, envelope: Envelope, reason: str, detail: str, attempts: int) -> None:
        self.dead_letters.append(
            {"service": service, "reason": reason, "detail": detail, "attempts": attempts, "envelope": envelope}
        )
