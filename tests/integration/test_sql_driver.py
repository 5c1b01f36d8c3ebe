"""The SQL store's hot path runs on the driver's connection (events/adapters/sql/driver.py): its errors must still be
SQLAlchemy's (what the workers and the HTTP edge treat as "unavailable now"), a connection the server dropped must not
be used again, and a worker's held connections must be one per thread."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import text

from events.adapters.sql import driver, migrate
from events.adapters.sql.driver import Connections
from events.adapters.sql.engine import Engines, engines
from events.adapters.sql.store import SqlStore
from events.settings import BusSettings
from events.unit_of_work import ConcurrentUpdate
from tests.support.databases import emptied, postgres_database, postgres_missing


def _store(database: Engines, held: bool = False) -> SqlStore:
    migrate.upgrade(database)
    return SqlStore(database, BusSettings(), outbox=False, held=held)


def _save(store: SqlStore, key: str, value: int) -> None:
    uow = store.unit_of_work("svc")
    document = uow.get("things", key) or {}
    uow.put("things", key, {**document, "value": value})
    uow.commit()


@pytest.fixture
def postgres_store() -> Iterator[tuple[Engines, SqlStore]]:
    """A store on a PostgreSQL database of its own, connections held, with the document things/a at value 1."""
    if missing := postgres_missing():
        pytest.skip(missing)
    database = emptied(postgres_database("driver"))
    try:
        store = _store(database, held=True)
        _save(store, "a", 1)
        yield database, store
    finally:
        database.dispose()


@pytest.fixture
def sqlite_engines(tmp_path: Path) -> Iterator[Engines]:
    database = engines(f"sqlite:///{tmp_path / 'db.sqlite3'}", busy_timeout_ms=50)
    yield database
    database.dispose()


def test_a_locked_sqlite_database_raises_sqlalchemys_operational_error_and_the_next_commit_works(
    sqlite_engines: Engines, tmp_path: Path,
) -> None:
    store = _store(sqlite_engines, held=True)
    _save(store, "a", 1)
    holder = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="locked"):
            _save(store, "a", 2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _save(store, "a", 3)  # the held connection was rolled back, not left inside a transaction
    assert store.documents("svc", "things") == {"a": {"value": 3}}


def test_held_connections_are_one_per_thread_and_kept(sqlite_engines: Engines) -> None:
    held = Connections(sqlite_engines.read, held=True)
    seen: dict[str, object] = {}

    def remember(name: str) -> None:
        with held.connection() as first, held.connection() as second:
            assert first is second
            seen[name] = first.dbapi_connection

    remember("main")
    other = threading.Thread(target=remember, args=("other",))
    other.start()
    other.join()
    remember("main again")
    assert seen["main"] is seen["main again"]
    assert seen["other"] is not seen["main"]


def test_a_held_reading_connection_sees_every_later_commit(sqlite_engines: Engines) -> None:
    """A held reading connection whose statement was left open would keep its snapshot: later reads would not see
    later commits (and checkpoints could not pass it)."""
    store = _store(sqlite_engines, held=True)
    for value in range(1, 4):
        _save(store, "a", value)
        assert store.unit_of_work("svc").get("things", "a") == {"value": value}


def test_a_postgres_connection_the_server_dropped_fails_once_as_unavailable_then_is_replaced(
    postgres_store: tuple[Engines, SqlStore],
) -> None:
    database, store = postgres_store
    with store.writes.connection() as connection:
        pid = connection.driver_connection.info.backend_pid
    with database.write.begin() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
        _save(store, "a", 2)
    assert raised.value.connection_invalidated
    _save(store, "a", 3)
    assert store.documents("svc", "things") == {"a": {"value": 3}}


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipeline", "statement-by-statement"])
def test_postgres_commits_and_refuses_a_stale_write_with_or_without_pipeline_mode(
    pipelined: bool, monkeypatch: pytest.MonkeyPatch, postgres_store: tuple[Engines, SqlStore],
) -> None:
    """psycopg on a libpq older than 14 has no pipeline mode: the store then sends its statements one by one, with the
    same checks."""
    monkeypatch.setattr(driver, "_psycopg_pipelines", lambda: pipelined)
    _, store = postgres_store
    stale = store.unit_of_work("svc")
    stale.get("things", "a")
    _save(store, "a", 2)
    stale.put("things", "a", {"value": 99})
    with pytest.raises(ConcurrentUpdate):
        stale.commit()
    assert store.documents("svc", "things") == {"a": {"value": 2}}
    _save(store, "b", 1)
    assert store.documents("svc", "things") == {"a": {"value": 2}, "b": {"value": 1}}


def test_a_postgres_unit_of_work_commits_in_one_round_trip_and_a_refused_one_writes_nothing(
    tmp_path: Path, postgres_store: tuple[Engines, SqlStore],
) -> None:
    """Its BEGIN, its writes and its COMMIT go behind one Sync (libpq's own trace of the messages sent): the checks
    that refuse it run in the server, so nothing is read back before COMMIT."""
    _, store = postgres_store
    trace = tmp_path / "libpq.trace"
    uow = store.unit_of_work("svc")
    uow.put("things", "a", {**(uow.get("things", "a") or {}), "value": 2})
    uow.put("things", "b", {"value": 1})
    with store.writes.connection() as connection, trace.open("w") as sink:
        pgconn = connection.driver_connection.pgconn
        pgconn.trace(sink.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            uow.commit()
        finally:
            pgconn.untrace()
    sent = [fields[2].split()[0] for fields in (line.split("\t") for line in trace.read_text().splitlines())
            if fields[0] == "F"]  # the frontend's messages: direction, length, type and its arguments
    assert sent.count("Sync") == 1 and "Query" not in sent, trace.read_text()
    assert '"COMMIT"' in trace.read_text()
    assert sent.index("Sync") > max(index for index, kind in enumerate(sent) if kind == "Execute"), sent
    assert store.documents("svc", "things") == {"a": {"value": 2}, "b": {"value": 1}}

    stale = store.unit_of_work("svc")
    stale.get("things", "a")
    stale.put("things", "c", {"value": 1})
    _save(store, "a", 3)
    stale.put("things", "a", {"value": 99})
    with pytest.raises(ConcurrentUpdate, match="things/a"):
        stale.commit()
    assert store.documents("svc", "things") == {"a": {"value": 3}, "b": {"value": 1}}
    _save(store, "a", 4)  # the same held connection, rolled back after the refusal
    assert store.documents("svc", "things")["a"] == {"value": 4}
