"""The monolith's bus: every service's handlers in one process, over ONE database, with nothing kept only in memory.

Every event a unit of work publishes is delivered by direct calls, in process, to the handlers of every subscribing
service, each with its own inbox mark, exactly as a broker would deliver it to each service's queue. Two dispatch
modes, both durable:

* `sync` (the default, what a monolith is): a command and everything it causes run in ONE database transaction,
  handler after handler, before the request is answered, so the answer is the final state and a reader never sees
  an in-between one. The exception is a handler that calls out of the process (`external`: the card gateway), which
  must not run with a transaction open: the transaction commits just before it, with the pending delivery as a row
  of the `deliveries` table, the call runs, and the rest of the saga commits in a second transaction. A crash in
  between leaves that row, and the dispatcher thread finishes it after a restart; the gateway's idempotency key (the
  order id) makes the repeated call return the first answer instead of charging again.
* `queued`: a command commits with one `deliveries` row per subscriber of each event it published and is answered at
  once; a dispatcher thread handles the rows in order (each handler's effects, its inbox mark, the rows of the events
  it published and the deletion of its own row in one transaction). Retries, their backoff and dead letters are rows
  too, so a `kill -9` loses nothing accepted.

A row is claimed with a lease (`lease` seconds, `FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's write lock
serialises the claim), so several monolith processes can share one database, and a row whose process died is taken
again once its lease ran out. A delivery that kills the process every time is dead-lettered after `max_deliveries`
starts, as the workers do.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Connection, delete, func, insert, select, update

from events.adapters.sql.deadletters import SqlDeadLetters
from events.adapters.sql.schema import deliveries
from events.adapters.sql.store import SqlStore, SqlUnitOfWork
from events.bus import BoundHandler, ServiceSpec, TransientError, bind_handlers
from events.envelope import Envelope
from events.messaging import Periodic
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, UnitOfWork

log = logging.getLogger(__name__)

DISPATCH_MODES = ("sync", "queued")
CONFLICT_ATTEMPTS = 10


@dataclass(frozen=True)
class _Row:
    id: int
    consumer: str
    envelope: str
    attempts: int
    started: int


class SqlInProcessBus:
    def __init__(
        self,
        store: SqlStore,
        dead_letters: SqlDeadLetters,
        settings: BusSettings,
        *,
        dispatch: str = "sync",
        external: Iterable[str] = (),
        lease: float = 10.0,
        poll_interval: float = 0.5,
    ) -> None:
        if dispatch not in DISPATCH_MODES:
            raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, not {dispatch!r}")
        self.store, self.dead_letters, self.settings = store, dead_letters, settings
        self.dispatch, self.external, self.lease, self.poll_interval = dispatch, set(external), lease, poll_interval
        self.settles_on_commit = dispatch == "sync"
        self._subscribers: dict[str, list[tuple[str, BoundHandler]]] = {}
        self.paused: set[str] = set()
        """services whose deliveries wait (fault injection: a monolith's stand-in for stopping one service's worker)"""
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._housekeeping: Periodic | None = None
        """while the dispatcher runs, the workers' relay pass for the one database: inbox rows past SHOP_INBOX_TTL
        purged, VACUUM and ANALYZE where no autovacuum does them (`SqlStore.housekeeping`)"""
        self.on_handled: Callable[[str, Envelope], None] | None = None

    # -- wiring ----------------------------------------------------------------------------------------------------
    def subscribe(self, spec: ServiceSpec, dependencies: Mapping[str, Any]) -> None:
        for type_name, handler in bind_handlers(spec, dependencies).items():
            self._subscribers.setdefault(type_name, []).append((spec.name, handler))

    def unit_of_work(self, service: str, cause: Envelope | None = None, inbox: str | None = None) -> UnitOfWork:
        return self.store.unit_of_work(service, cause, inbox)

    # -- a command (an HTTP request) -------------------------------------------------------------------------------
    def commit(self, uow: UnitOfWork) -> None:
        """Commit a command's unit of work. `sync`: with everything it causes (see the module's docstring);
        `queued`: with the rows of the deliveries it causes. Raises ConcurrentUpdate when a document the command read
        changed meanwhile (the command must run again on fresh state)."""
        assert isinstance(uow, SqlUnitOfWork)
        deferred: list[_Row] = []
        for attempt in range(CONFLICT_ATTEMPTS):
            deferred = []
            try:
                with self.store.engines.write.begin() as connection:
                    published = uow.commit_in(connection)
                    self._after(connection, published, deferred)
                break
            except _CascadeConflict:
                uow.reopen()  # the command's own writes are replayed as they were; the saga's steps read again
                if attempt == CONFLICT_ATTEMPTS - 1:
                    raise ConcurrentUpdate("a saga step kept conflicting with concurrent changes") from None
        self._wake_dispatcher()
        for row in deferred:
            self._deliver(row)

    def _after(self, connection: Connection, published: list[Envelope], deferred: list[_Row]) -> None:
        """What follows a commit inside its transaction: the cascade (`sync`), or the delivery rows (`queued`)."""
        if self.dispatch == "queued":
            self._enqueue(connection, published)
        else:
            self._cascade(connection, published, deferred)

    def _enqueue(self, connection: Connection, published: list[Envelope], due: float | None = None) -> None:
        rows = [
            {"consumer": service, "envelope": envelope.model_dump_json(), "attempts": 0, "started": 0,
             "due_at": time.time() if due is None else due}
            for envelope in published for service, _ in self._routes(envelope)
        ]
        if rows:
            connection.execute(insert(deliveries), rows)

    def _routes(self, envelope: Envelope) -> list[tuple[str, BoundHandler]]:
        subscribers = self._subscribers.get(envelope.type, [])
        if not subscribers:
            log.warning("no subscriber for %s %s", envelope.type, envelope.event_id)
        return subscribers

    def _cascade(self, connection: Connection, published: list[Envelope], deferred: list[_Row]) -> None:
        """Deliver `published` and everything it causes, depth first, inside `connection`'s transaction. A handler
        that fails is dead-lettered (its own changes rolled back to a savepoint); the others go on."""
        pending = deque((service, handler, envelope) for envelope in published
                        for service, handler in self._routes(envelope))
        while pending:
            service, handler, envelope = pending.popleft()
            if service in self.paused:
                self._enqueue_one(connection, service, envelope, time.time(), started=0)
                continue
            if envelope.type in self.external:
                lease = time.time() + self.lease  # finished right after this commit, by the request itself
                [row_id] = self._enqueue_one(connection, service, envelope, lease)
                deferred.append(_Row(row_id, service, envelope.model_dump_json(), 0, 0))
                continue
            caused = self._handle_attached(connection, service, handler, envelope)
            pending.extend((s, h, e) for e in caused for s, h in self._routes(e))

    def _enqueue_one(
        self, connection: Connection, service: str, envelope: Envelope, due: float, started: int = 1
    ) -> list[int]:
        row_id = connection.execute(insert(deliveries).values(
            consumer=service, envelope=envelope.model_dump_json(), attempts=0, started=started, due_at=due,
        ).returning(deliveries.c.id)).scalar_one()
        return [int(row_id)]

    def _handle_attached(
        self, connection: Connection, service: str, handler: BoundHandler, envelope: Envelope
    ) -> list[Envelope]:
        try:
            with connection.begin_nested():
                uow = self.store.unit_of_work(service, envelope, connection=connection)
                if uow.already_handled():
                    return []
                handler(envelope.event(), uow)
                caused = uow.commit_in(connection)
        except ConcurrentUpdate as exc:
            raise _CascadeConflict() from exc
        except TransientError as exc:
            # Worth retrying, but not with the transaction held: a row, taken by the dispatcher after the backoff.
            log.warning("%s: %r on %s; retried later", service, exc, envelope.type)
            self._enqueue_one(connection, service, envelope, time.time() + self.settings.retry_backoff, started=0)
            return []
        except Exception as exc:  # a bug, or bad data: the rest of the saga goes on
            log.exception("%s failed on %s", service, envelope.type)
            self._dead_letter(service, envelope, "handler error", "".join(traceback.format_exception(exc)), 1)
            return []
        if self.on_handled:
            self.on_handled(service, envelope)
        return caused

    def pause(self, service: str) -> None:
        self.paused.add(service)

    def resume(self, service: str) -> None:
        self.paused.discard(service)
        self._wake_dispatcher()

    # -- the dispatcher: queued deliveries, retries, and what a crash left behind ------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._dispatch_forever, name="event-dispatcher", daemon=True)
            self._thread.start()
            self._housekeeping = Periodic(
                "monolith-housekeeping", self.settings.relay_interval, self._tidy,
                (sqlalchemy.exc.DBAPIError,)).start()

    def stop(self, timeout: float = 10.0) -> int:
        """Finish what is due (bounded by `timeout`), then stop. Rows left are not lost: the next start takes them.
        Returns how many rows are left."""
        if self._thread is not None:
            deadline = time.monotonic() + timeout
            while self.backlog(due_only=True) and time.monotonic() < deadline:
                self._wake_dispatcher()
                time.sleep(0.05)
            self._stopping.set()
            self._wake_dispatcher()
            self._thread.join(5.0)
            self._thread = None
        if self._housekeeping is not None:
            self._housekeeping.stop(wait=5.0)
            self._housekeeping = None
        return self.backlog()

    def _tidy(self) -> None:
        self.store.housekeeping(time.time() - self.settings.inbox_ttl)

    def backlog(self, due_only: bool = False) -> int:
        query = select(func.count()).select_from(deliveries)
        if due_only:
            query = query.where(deliveries.c.due_at <= time.time())
        with self.store.engines.read.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def backlog_by_service(self) -> dict[str, int]:
        """Deliveries waiting per consuming service: the in-process queue, as the console shows it."""
        query = select(deliveries.c.consumer, func.count()).group_by(deliveries.c.consumer)
        with self.store.engines.read.connect() as connection:
            return {str(consumer): int(count) for consumer, count in connection.execute(query)}

    def drain(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.backlog():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.backlog()} deliveries still pending after {timeout}s")
            self._wake_dispatcher()
            time.sleep(0.02)

    def _wake_dispatcher(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _dispatch_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                row = self._claim()
            except Exception:  # the database may be away for a while: keep trying
                log.exception("claiming a delivery failed; trying again")
                row = None
                self._stopping.wait(self.poll_interval)
            if row is None:
                with self._wake:
                    self._wake.wait(self.poll_interval)
                continue
            try:
                self._deliver(row)
            except Exception:  # the row is still there; its lease will bring it back
                log.exception("delivering %s to %s failed", row.id, row.consumer)

    def _claim(self) -> _Row | None:
        """The oldest due row, leased to this process, with its start counted (a crash leaves the count)."""
        now = time.time()
        query = select(deliveries).where(deliveries.c.due_at <= now).order_by(deliveries.c.id).limit(1)
        if self.paused:
            query = query.where(deliveries.c.consumer.not_in(sorted(self.paused)))
        if not self.store.engines.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        with self.store.engines.write.begin() as connection:
            found = connection.execute(query).first()
            if found is None:
                return None
            connection.execute(update(deliveries).where(deliveries.c.id == found.id).values(
                due_at=now + self.lease, started=found.started + 1))
        return _Row(found.id, found.consumer, found.envelope, found.attempts, found.started + 1)

    def _deliver(self, row: _Row) -> None:
        """One delivery of a claimed row: the handler runs with no transaction open (it may call out), then its
        effects, the rows of what it published (or, `sync`, the rest of the saga) and the end of this row commit
        together."""
        envelope = Envelope.model_validate_json(row.envelope)
        handler = dict(self._subscribers.get(envelope.type, [])).get(row.consumer)
        if handler is None:
            self._finish(row, "no handler", f"{row.consumer} does not handle {envelope.type}")
            return
        if row.started > self.settings.max_deliveries:
            self._finish(row, "poison message",
                         f"started {row.started - 1} times without finishing (the process died each time)")
            return
        for _attempt in range(CONFLICT_ATTEMPTS):
            uow = self.store.unit_of_work(row.consumer, envelope)
            try:
                if uow.already_handled():
                    self._remove(row)
                    return
                handler(envelope.event(), uow)
            except (TransientError, ConcurrentUpdate) as exc:
                self._retry_or_give_up(row, exc)
                return
            except Exception as exc:  # a bug: keep the message, keep the process
                log.exception("%s failed on %s", row.consumer, envelope.type)
                self._finish(row, "handler error", "".join(traceback.format_exception(exc)))
                return
            deferred: list[_Row] = []
            try:
                with self.store.engines.write.begin() as connection:
                    connection.execute(delete(deliveries).where(deliveries.c.id == row.id))
                    try:
                        published = uow.commit_in(connection)
                    except AlreadyHandled:
                        published = []
                    self._after(connection, published, deferred)
            except (ConcurrentUpdate, _CascadeConflict):
                continue  # read again and run again
            if self.on_handled:
                self.on_handled(row.consumer, envelope)
            for next_row in deferred:
                self._deliver(next_row)
            return
        self._retry_or_give_up(row, ConcurrentUpdate("kept conflicting"))

    def _retry_or_give_up(self, row: _Row, error: Exception) -> None:
        """The workers' retry policy: `retry_backoff * 2**attempt`, `max_retries` times, then a dead letter."""
        if row.attempts >= self.settings.max_retries:
            self._finish(row, "retries exhausted", repr(error), attempts=row.attempts + 1)
            return
        due = time.time() + self.settings.retry_backoff * 2**row.attempts
        with self.store.engines.write.begin() as connection:
            connection.execute(update(deliveries).where(deliveries.c.id == row.id).values(
                attempts=row.attempts + 1, started=row.started - 1, due_at=due))
        if self.dispatch == "sync":
            # The request that caused it waits for the outcome, as a direct call would: retry here, on its thread.
            time.sleep(max(0.0, due - time.time()))
            self._deliver(_Row(row.id, row.consumer, row.envelope, row.attempts + 1, row.started))

    def _finish(self, row: _Row, reason: str, detail: str, attempts: int | None = None) -> None:
        envelope = Envelope.model_validate_json(row.envelope)
        self._dead_letter(row.consumer, envelope, reason, detail, attempts or max(row.started, 1))
        self._remove(row)

    def _remove(self, row: _Row) -> None:
        with self.store.engines.write.begin() as connection:
            connection.execute(delete(deliveries).where(deliveries.c.id == row.id))

    def _dead_letter(self, service: str, envelope: Envelope, reason: str, detail: str, attempts: int) -> None:
        self.dead_letters.add(service, reason, detail, {"envelope": envelope.model_dump_json()}, attempts)

    def replay(self, record: dict[str, Any]) -> str:
        """A dead letter back into the queue of its service (after the cause is fixed), once."""
        message = record.get("message")
        if not isinstance(message, dict) or "envelope" not in message:
            raise ValueError(f"dead letter {record['id']} holds no envelope (reason: {record['reason']})")
        envelope = Envelope.model_validate_json(message["envelope"])
        with self.store.engines.write.begin() as connection:
            self._enqueue_one(connection, record["service"], envelope, time.time(), started=0)
        self.dead_letters.remove(record)
        self._wake_dispatcher()
        return str(record["service"])


class _CascadeConflict(Exception):
    """A handler of the cascade met a concurrent change: the whole transaction is rolled back and run again."""
