"""A service's documents, inbox and outbox in its own SQL database.

One database transaction holds what a handler changed (each document with an optimistic version check), the inbox row
(unique per consumer and event id: a second delivery cannot commit) and one outbox row per published event. After the
commit the events are handed to the broker at once (`on_commit`, an `OutboxSender`); the rows the broker took are
deleted by the store's next write transaction (or, when none comes soon, by a flush of their own: `SqlOutbox.settle`),
so a unit of work costs one write transaction, not two. Whatever a crash left behind is found by the relay
(`SqlOutbox.claim`: `FOR UPDATE SKIP LOCKED` on PostgreSQL, so several relays never send one row twice; SQLite has one
writer at a time). A crash between the broker taking an event and its row being deleted sends it twice, which the
consumers' inbox absorbs.

The hot path's statements are built by SQLAlchemy once per store (`Statements`) and run on the driver's connection
(driver.py). On PostgreSQL a transaction travels in one round trip, BEGIN to COMMIT (psycopg's pipeline mode), so its
checks refuse it inside the server (`RefusingStatements`); SQLite reads each statement's result before COMMIT.

A unit of work can also run *attached* to an open transaction (`connection`): its reads and its commit then happen
inside it, which is how the monolith runs a whole saga in one transaction (inprocess.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy.exc
from sqlalchemy import BindParameter, Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from events.adapters.sql.driver import (
    Compiled,
    Connections,
    Cursor,
    Result,
    attached,
    compile_for,
    reading,
    transaction,
)
from events.adapters.sql.engine import Engines
from events.adapters.sql.schema import documents, outbox
from events.adapters.sql.schema import inbox as inbox_table
from events.adapters.sql.upkeep import TableUpkeep
from events.envelope import Envelope, Signatures
from events.messaging import OutgoingMessage
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, UnitOfWork

log = logging.getLogger(__name__)


class Statements:
    """The statements of the hot path, built once per dialect by SQLAlchemy and run on the driver (driver.py)."""

    def __init__(self, engines: Engines) -> None:
        dialect = engines.write.dialect
        insert_for = sqlite.insert if engines.is_sqlite else postgresql.insert
        service: BindParameter[str] = bindparam("b_service")
        collection: BindParameter[str] = bindparam("b_collection")
        key: BindParameter[str] = bindparam("b_key")
        self.get = compile_for(dialect, select(documents.c.version, documents.c.body).where(
            documents.c.service == service, documents.c.collection == collection, documents.c.key == key))
        self.handled = compile_for(dialect, select(inbox_table.c.event_id).where(
            inbox_table.c.consumer == bindparam("b_consumer"), inbox_table.c.event_id == bindparam("b_event_id")))
        self.mark = compile_for(
            dialect, insert_for(inbox_table).on_conflict_do_nothing().returning(inbox_table.c.event_id),
            ("consumer", "event_id", "handled_at"))
        """INSERT that returns no row when the event id is already there, instead of failing the transaction"""
        self.create = compile_for(
            dialect, insert_for(documents).on_conflict_do_nothing().returning(documents.c.key),
            ("service", "collection", "key", "version", "body"))
        self.change = compile_for(dialect, update(documents).where(
            documents.c.service == service, documents.c.collection == collection, documents.c.key == key,
            documents.c.version == bindparam("b_read")), ("version", "body"))
        self.outbox = compile_for(dialect, insert(outbox), ("id", "message", "created_at", "due_at"))
        self.settle = compile_for(dialect, delete(outbox).where(outbox.c.id == bindparam("b_id")))
        self.refusing = None if engines.is_sqlite else RefusingStatements(dialect, service, collection, key)
        """PostgreSQL: the same writes as statements that fail the transaction instead of returning no row"""


class RefusingStatements:
    """A unit of work's writes on PostgreSQL, whose checks refuse the transaction inside the server, so that its
    statements and its COMMIT travel in one round trip (driver.py) with no result read in between: the inbox row and a
    new document fail on their primary key (a second delivery, a document created meanwhile), a changed document's
    UPDATE fails through `shop_changed_one` when its version check matched no row (migration 0003). `refusal` tells
    which check refused: AlreadyHandled or ConcurrentUpdate, as the statements that return no row would have said."""

    INBOX_KEY, DOCUMENTS_KEY = "inbox_pkey", "documents_pkey"
    """the primary keys' names (PostgreSQL names a table's primary key <table>_pkey)"""

    def __init__(self, dialect: Dialect, service: BindParameter[str], collection: BindParameter[str],
                 key: BindParameter[str]) -> None:
        self.mark = compile_for(dialect, insert(inbox_table), ("consumer", "event_id", "handled_at"))
        self.create = compile_for(dialect, insert(documents), ("service", "collection", "key", "version", "body"))
        changed = update(documents).where(
            documents.c.service == service, documents.c.collection == collection, documents.c.key == key,
            documents.c.version == bindparam("b_read"),
        ).values(version=bindparam("b_version"), body=bindparam("b_body")).returning(documents.c.version).cte("changed")
        self.change = compile_for(dialect, select(func.shop_changed_one(
            select(func.count()).select_from(changed).scalar_subquery(), bindparam("b_document"))))

    def refusal(self, error: BaseException, event_id: str) -> Exception | None:
        """AlreadyHandled or ConcurrentUpdate when `error` is one of these statements refusing, else None."""
        cause = getattr(error, "orig", None)
        sqlstate = getattr(cause, "sqlstate", None)
        diagnostic = getattr(cause, "diag", None)
        if sqlstate == "23505" and diagnostic is not None:  # unique_violation
            if diagnostic.constraint_name == self.INBOX_KEY:
                return AlreadyHandled(event_id)
            if diagnostic.constraint_name == self.DOCUMENTS_KEY:
                return ConcurrentUpdate(str(diagnostic.message_detail or "a document created meanwhile"))
        if sqlstate == "40001" and diagnostic is not None:  # serialization_failure: shop_changed_one
            return ConcurrentUpdate(str(diagnostic.message_primary))
        return None


class SqlStore:
    def __init__(
        self,
        engines: Engines,
        settings: BusSettings,
        keys: Signatures | None = None,
        on_commit: Callable[[list[OutgoingMessage], object | None], bool] | None = None,
        outbox: bool = True,
        settled: SqlOutbox | None = None,
        held: bool = False,
    ) -> None:  # keys: who signs the outgoing events (None: the monolith, whose events never leave the process)
        self.engines, self.settings, self.on_commit, self.keys = engines, settings, on_commit, keys
        """on_commit(events, acknowledgement): hands the committed events to the broker (`OutboxSender.hand_over`);
        True when the broker acknowledged the handled message in the same step"""
        if outbox and keys is None:
            raise ValueError("a store whose events go to a broker needs the keys to sign them")
        self.outbox = outbox
        """False for a store whose events are dispatched in process (the monolith): no outbox rows, no broker"""
        self.settled = settled
        """the relay's outbox: each write transaction also deletes the rows the broker took since the last one"""
        # held: each thread keeps its connections (`driver.Connections`), for a process of few threads (a solo worker)
        self.statements = Statements(engines)
        self.reads, self.writes = Connections(engines.read, held), Connections(engines.transactions, held)
        self.upkeep = None if engines.is_sqlite else TableUpkeep(engines.read)
        """PostgreSQL: VACUUM and ANALYZE where the server's autovacuum does not run (upkeep.py)"""

    def unit_of_work(
        self, service: str, cause: Envelope | None = None, inbox: str | None = None,
        connection: Connection | None = None,
    ) -> SqlUnitOfWork:
        return SqlUnitOfWork(self, service, cause, inbox, connection)

    def documents(self, service: str, collection: str, keys: list[str] | None = None) -> dict[str, dict[str, Any]]:
        query = select(documents.c.key, documents.c.body).where(
            documents.c.service == service, documents.c.collection == collection)
        if keys is not None:
            query = query.where(documents.c.key.in_(keys))
        with self.engines.read.connect() as connection:
            return {key: json.loads(body) for key, body in connection.execute(query)}

    def forget(self, service: str, collection: str, inbox: str | None = None) -> None:
        with self.engines.write.begin() as connection:
            connection.execute(delete(documents).where(documents.c.service == service,
                                                       documents.c.collection == collection))
            if inbox is not None:
                connection.execute(delete(inbox_table).where(inbox_table.c.consumer == inbox))

    def purge_inbox(self, older_than: float) -> int:
        """Forget handled event ids older than any redelivery can be (the inbox must not grow for ever)."""
        with self.engines.write.begin() as connection:
            result = connection.execute(delete(inbox_table).where(inbox_table.c.handled_at < older_than))
            return int(result.rowcount or 0)

    def housekeeping(self, inbox_older_than: float) -> None:
        """The relay's pass over this store's tables: old inbox rows purged, then VACUUM and ANALYZE where due and no
        autovacuum does them (PostgreSQL, `TableUpkeep`)."""
        self.purge_inbox(inbox_older_than)
        if self.upkeep is not None:
            try:
                self.upkeep()
            except sqlalchemy.exc.DBAPIError as exc:  # never the relay's pass: the next one tries again
                log.warning("table upkeep: %r (next pass tries again)", exc)

    def read(self, statement: Compiled, values: dict[str, Any], connection: Connection | None) -> Any:
        """The first row of a query, inside `connection`'s transaction or on a reading connection of its own."""
        if connection is not None:
            cursor = attached(connection)
            try:
                return cursor.first(statement, values)
            finally:
                cursor.close()
        with reading(self.reads) as reader:
            return reader.first(statement, values)


class SqlUnitOfWork(UnitOfWork):
    def __init__(
        self, store: SqlStore, service: str, cause: Envelope | None, inbox_name: str | None,
        connection: Connection | None,
    ) -> None:
        super().__init__(service, cause, inbox_name)
        self._store, self._connection = store, connection
        self._versions: dict[tuple[str, str], int] = {}
        self._written: tuple[dict[tuple[str, str], str], list[Envelope]] = ({}, [])
        self.messages: list[OutgoingMessage] = []
        """what the last commit wrote to the outbox (attached units of work leave sending to their owner)"""

    def get_json(self, collection: str, key: str) -> str | None:
        row = self._store.read(self._store.statements.get,
                               {"b_service": self.service, "b_collection": collection, "b_key": key}, self._connection)
        self._versions[(collection, key)] = row[0] if row else 0
        return None if row is None else str(row[1])

    def already_handled(self) -> bool:
        if self.cause is None:
            return False
        row = self._store.read(self._store.statements.handled,
                               {"b_consumer": self.inbox, "b_event_id": str(self.cause.event_id)}, self._connection)
        return row is not None

    def commit(self) -> None:
        if self._connection is not None:
            self.commit_in(self._connection)
            return
        store = self._store
        settled = store.settled.take() if store.settled is not None else []
        try:
            with transaction(store.writes, store.engines.begin) as cursor:
                messages = self.write_all(cursor)  # on PostgreSQL a refusal is raised when the transaction ends
                if settled:
                    cursor.execute_many(store.statements.settle, [{"b_id": row_id} for row_id in settled])
        except BaseException as exc:
            if store.settled is not None:
                store.settled.give_back(settled)
            refusing = store.statements.refusing
            refused = refusing.refusal(exc, self._event_id) if refusing is not None else None
            if refused is not None:
                raise refused from exc
            raise
        self.messages = messages
        self._committed()
        if self.messages and store.on_commit is not None:
            own_delivery = self.inbox == self.service  # not a replay's own inbox
            self.acknowledged = store.on_commit(self.messages, self.acknowledgement if own_delivery else None)

    def commit_in(self, connection: Connection) -> list[Envelope]:
        """Write everything inside `connection`'s open transaction (the caller commits it); returns the published
        events. Raises AlreadyHandled or ConcurrentUpdate, after which the caller must roll back."""
        cursor = attached(connection)
        try:
            self.messages = self.write_all(cursor)
        finally:
            cursor.close()
        self._written = (dict(self._writes), list(self.outbox))
        self._committed()
        return self.committed

    def write_all(self, cursor: Cursor) -> list[OutgoingMessage]:
        """Everything staged, with the outbox rows of its events (signed here): the messages they hold."""
        store = self._store
        keys = store.keys
        messages = [OutgoingMessage.of(envelope, keys) for envelope in self.outbox] if keys and store.outbox else []
        self.write(cursor, messages)
        return messages

    def reopen(self) -> None:
        """The transaction `commit_in` wrote into was rolled back: stage the same writes and events again."""
        writes, outbox = self._written
        self._writes, self.outbox, self.committed, self.messages = dict(writes), list(outbox), [], []

    def write(self, cursor: Cursor, messages: Sequence[OutgoingMessage]) -> None:
        """Everything this unit of work changes, inside `cursor`'s transaction. Every statement is sent before any
        result is read (in a pipeline they travel together); then the inbox mark and each document's version check
        decide: AlreadyHandled or ConcurrentUpdate, and the caller rolls back."""
        now = time.time()
        statements = self._store.statements
        if cursor.pipelined and statements.refusing is not None:
            self._send(cursor, statements.refusing, messages, now)
            return
        marked, event_id = None, self._event_id
        if self.cause is not None:
            marked = cursor.submit(statements.mark, {"consumer": self.inbox, "event_id": event_id, "handled_at": now})
        created: list[tuple[str, Result]] = []
        changed: list[tuple[str, Result]] = []
        for (collection, key), body in self._writes.items():
            read = self._versions.get((collection, key), 0)
            if read == 0:
                created.append((f"{collection}/{key}", cursor.submit(statements.create, {
                    "service": self.service, "collection": collection, "key": key, "version": 1, "body": body,
                })))
            else:
                changed.append((f"{collection}/{key}", cursor.submit(statements.change, {
                    "b_service": self.service, "b_collection": collection, "b_key": key, "b_read": read,
                    "version": read + 1, "body": body,
                })))
        self._write_outbox(cursor, messages, now)
        if marked is not None and marked.first() is None:
            raise AlreadyHandled(event_id)
        for name, result in created:
            if result.first() is None:
                raise ConcurrentUpdate(name)
        for name, result in changed:
            if result.rowcount != 1:
                raise ConcurrentUpdate(name)

    def _send(self, cursor: Cursor, statements: RefusingStatements, messages: Sequence[OutgoingMessage],
              now: float) -> None:
        """`write` on PostgreSQL: nothing read back, the server refuses the transaction itself (the caller's commit
        raises, and `RefusingStatements.refusal` says why)."""
        if self.cause is not None:
            cursor.send(statements.mark, {"consumer": self.inbox, "event_id": self._event_id, "handled_at": now})
        for (collection, key), body in self._writes.items():
            read = self._versions.get((collection, key), 0)
            if read == 0:
                cursor.send(statements.create, {
                    "service": self.service, "collection": collection, "key": key, "version": 1, "body": body,
                })
            else:
                cursor.send(statements.change, {
                    "b_service": self.service, "b_collection": collection, "b_key": key, "b_read": read,
                    "b_version": read + 1, "b_body": body, "b_document": f"{collection}/{key}",
                })
        self._write_outbox(cursor, messages, now)

    def _write_outbox(self, cursor: Cursor, messages: Sequence[OutgoingMessage], now: float) -> None:
        if messages:
            due = now + self._store.settings.redeliver_after
            cursor.execute_many(self._store.statements.outbox, [
                {"id": message.id, "message": message.to_json(), "created_at": now, "due_at": due}
                for message in messages
            ])

    @property
    def _event_id(self) -> str:
        return str(self.cause.event_id) if self.cause is not None else ""


class SqlOutbox:
    """`Outbox` for the relay: rows left by a crash (or a broker outage) after their due time.

    Rows the broker took are not deleted one transaction each: `settle` keeps their ids, the store's next write
    transaction deletes them with its own writes (`take`, `give_back` if it rolls back), and a background flush
    deletes whatever is left `linger` seconds later, so an idle service's outbox empties too. The relay and `pending`
    flush first, so a settled row is never claimed nor counted. Until the delete, a crash only means the relay sends
    those events again after their due time (the consumers' inbox absorbs them)."""

    FLUSH_AT = 256
    """ids kept at most before `settle` deletes them at once"""

    def __init__(self, engines: Engines, settings: BusSettings, linger: float = 0.2) -> None:
        self.engines, self.settings, self.linger = engines, settings, linger
        self.statements = Statements(engines)
        self.connections = Connections(engines.transactions)
        self._settled: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None

    def claim(self, limit: int) -> list[OutgoingMessage]:
        """Due rows, claimed by pushing their due time forward in the same transaction that locked them: two relays
        never send one row in the same period (PostgreSQL skips rows another relay holds; SQLite's write lock
        serialises the claim)."""
        self.flush()
        now = time.time()
        query = select(outbox.c.id, outbox.c.message).where(outbox.c.due_at <= now).order_by(
            outbox.c.due_at).limit(limit)
        if not self.engines.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        with self.engines.write.begin() as connection:
            rows = connection.execute(query).all()
            if rows:
                connection.execute(update(outbox).where(outbox.c.id.in_([row.id for row in rows])).values(
                    due_at=now + self.settings.redeliver_after))
        return [OutgoingMessage.from_json(row.message) for row in rows]

    def settle(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._lock:
            self._settled.extend(ids)
            full = len(self._settled) >= self.FLUSH_AT
            if not full and (self._flusher is None or not self._flusher.is_alive()):  # none yet, or lost in a fork
                self._flusher = threading.Thread(target=self._flush_when_idle, name="outbox-settle", daemon=True)
                self._flusher.start()
        if full:
            self.flush()
        else:
            self._wake.set()

    def take(self) -> list[str]:
        """The settled ids not deleted yet: the caller deletes them in its transaction, or gives them back."""
        with self._lock:
            ids, self._settled = self._settled, []
        return ids

    def give_back(self, ids: list[str]) -> None:
        if ids:
            with self._lock:
                self._settled[:0] = ids

    def flush(self) -> None:
        ids = self.take()
        if not ids:
            return
        try:
            with transaction(self.connections, self.engines.begin) as cursor:
                cursor.execute_many(self.statements.settle, [{"b_id": row_id} for row_id in ids])
        except BaseException:
            self.give_back(ids)
            raise

    def _flush_when_idle(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.linger)  # a write transaction in the meantime takes them along
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - the next settle, write or relay pass deletes them
                log.warning("outbox: settled rows not deleted yet (%r)", exc)

    def pending(self) -> int:
        self.flush()
        with self.engines.read.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(outbox)).scalar_one())
