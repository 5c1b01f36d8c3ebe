"""A service's documents, inbox and outbox in its own SQL database.

One database transaction holds what a handler changed (each document with an optimistic version check), the inbox row
(unique per consumer and event id: a second delivery cannot commit) and one outbox row per published event. After the
commit the events are handed to the broker at once (`on_commit`, an `OutboxSender`) and their rows deleted; whatever a
crash left behind is found by the relay (`SqlOutbox.claim`: `FOR UPDATE SKIP LOCKED` on PostgreSQL, so several relays
never send one row twice; SQLite has one writer at a time). A crash between the broker taking an event and its row
being deleted sends it twice, which the consumers' inbox absorbs.

A unit of work can also run *attached* to an open transaction (`connection`): its reads and its commit then happen
inside it, which is how the monolith runs a whole saga in one transaction (inprocess.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Insert, Table, and_, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from events.adapters.sql.engine import Engines
from events.adapters.sql.schema import documents, outbox
from events.adapters.sql.schema import inbox as inbox_table
from events.envelope import Envelope, Signatures
from events.messaging import OutgoingMessage
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, UnitOfWork


class SqlStore:
    def __init__(
        self,
        engines: Engines,
        settings: BusSettings,
        keys: Signatures | None = None,
        on_commit: Callable[[list[OutgoingMessage]], object] | None = None,
        outbox: bool = True,
    ) -> None:  # keys: who signs the outgoing events (None: the monolith, whose events never leave the process)
        self.engines, self.settings, self.on_commit, self.keys = engines, settings, on_commit, keys
        if outbox and keys is None:
            raise ValueError("a store whose events go to a broker needs the keys to sign them")
        self.outbox = outbox
        """False for a store whose events are dispatched in process (the monolith): no outbox rows, no broker"""

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

    def insert_new(self, table: Table) -> Insert:
        """INSERT that does nothing when the key exists (no row RETURNED), instead of failing the transaction."""
        dialect = postgresql if not self.engines.is_sqlite else sqlite
        return dialect.insert(table).on_conflict_do_nothing()


class SqlUnitOfWork(UnitOfWork):
    def __init__(
        self, store: SqlStore, service: str, cause: Envelope | None, inbox_name: str | None,
        connection: Connection | None,
    ) -> None:
        super().__init__(service, cause, inbox_name)
        self._store, self._connection = store, connection
        self._versions: dict[tuple[str, str], int] = {}
        self._written: tuple[dict[tuple[str, str], dict[str, Any]], list[Envelope]] = ({}, [])
        self.messages: list[OutgoingMessage] = []
        """what the last commit wrote to the outbox (attached units of work leave sending to their owner)"""

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        query = select(documents.c.version, documents.c.body).where(
            documents.c.service == self.service, documents.c.collection == collection, documents.c.key == key)
        if self._connection is not None:
            row = self._connection.execute(query).first()
        else:
            with self._store.engines.read.connect() as connection:
                row = connection.execute(query).first()
        self._versions[(collection, key)] = row.version if row else 0
        return None if row is None else dict(json.loads(row.body))

    def already_handled(self) -> bool:
        if self.cause is None:
            return False
        query = select(inbox_table.c.event_id).where(inbox_table.c.consumer == self.inbox,
                                                     inbox_table.c.event_id == str(self.cause.event_id))
        if self._connection is not None:
            return self._connection.execute(query).first() is not None
        with self._store.engines.read.connect() as connection:
            return connection.execute(query).first() is not None

    def commit(self) -> None:
        if self._connection is not None:
            self.commit_in(self._connection)
            return
        with self._store.engines.write.begin() as connection:
            self.commit_in(connection)
        if self.messages and self._store.on_commit is not None:
            self._store.on_commit(self.messages)

    def commit_in(self, connection: Connection) -> list[Envelope]:
        """Write everything inside `connection`'s open transaction (the caller commits it); returns the published
        events. Raises AlreadyHandled or ConcurrentUpdate, after which the caller must roll back."""
        store = self._store
        keys = store.keys
        messages = [OutgoingMessage.of(envelope, keys) for envelope in self.outbox] if keys and store.outbox else []
        self.write(connection, messages)
        self.messages = messages
        self._written = (dict(self._writes), list(self.outbox))
        self._committed()
        return self.committed

    def reopen(self) -> None:
        """The transaction `commit_in` wrote into was rolled back: stage the same writes and events again."""
        writes, outbox = self._written
        self._writes, self.outbox, self.committed, self.messages = dict(writes), list(outbox), [], []

    def write(self, connection: Connection, messages: Sequence[OutgoingMessage]) -> None:
        """Everything this unit of work changes, inside `connection`'s transaction."""
        now = time.time()
        store = self._store
        if self.cause is not None:
            marked = connection.execute(store.insert_new(inbox_table).values(
                consumer=self.inbox, event_id=str(self.cause.event_id), handled_at=now,
            ).returning(inbox_table.c.event_id)).first()
            if marked is None:
                raise AlreadyHandled(str(self.cause.event_id))
        for (collection, key), document in self._writes.items():
            body = json.dumps(document, separators=(",", ":"))
            read = self._versions.get((collection, key), 0)
            if read == 0:
                created = connection.execute(store.insert_new(documents).values(
                    service=self.service, collection=collection, key=key, version=1, body=body,
                ).returning(documents.c.key)).first()
                if created is None:
                    raise ConcurrentUpdate(f"{collection}/{key}")
            else:
                changed = connection.execute(update(documents).where(and_(
                    documents.c.service == self.service, documents.c.collection == collection,
                    documents.c.key == key, documents.c.version == read,
                )).values(version=read + 1, body=body)).rowcount
                if changed != 1:
                    raise ConcurrentUpdate(f"{collection}/{key}")
        if messages:
            due = now + self._store.settings.redeliver_after
            connection.execute(insert(outbox), [
                {"id": message.id, "message": message.to_json(), "created_at": now, "due_at": due}
                for message in messages
            ])


class SqlOutbox:
    """`Outbox` for the relay: rows left by a crash (or a broker outage) after their due time."""

    def __init__(self, engines: Engines, settings: BusSettings) -> None:
        self.engines, self.settings = engines, settings

    def claim(self, limit: int) -> list[OutgoingMessage]:
        """Due rows, claimed by pushing their due time forward in the same transaction that locked them: two relays
        never send one row in the same period (PostgreSQL skips rows another relay holds; SQLite's write lock
        serialises the claim)."""
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
        if ids:
            with self.engines.write.begin() as connection:
                connection.execute(delete(outbox).where(outbox.c.id.in_(list(ids))))

    def pending(self) -> int:
        with self.engines.read.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(outbox)).scalar_one())
