"""The hot path's statements, built by SQLAlchemy once and run on the driver's own connection.

A unit of work runs a handful of statements per message (its reads; then, in one transaction, the inbox mark, each
document, the outbox rows). SQLAlchemy builds each of them once per dialect (`compile_for`); a `Cursor` runs them on
the DBAPI connection of a pooled connection (`Engine.raw_connection`, SQLAlchemy's documented way to the driver),
which skips what `Connection.execute` adds per call: an execution context, a result object and type processing that
these plain integer and text columns do not need. On SQLite that was more than the statements themselves: in a timing
loop here a read took 42 µs and a handled message (its read, then the transaction with its inbox mark, document and
outbox row) 512 µs through `Connection.execute`, 19 and 288 µs through the driver. On PostgreSQL a transaction runs
in psycopg's pipeline mode: its BEGIN, its statements and its COMMIT are sent together and their results read when
the pipeline ends, one round trip for the whole transaction when no result is read before (`Cursor.send`; a statement
that fails makes the server skip the rest, COMMIT included, and the error is raised when the pipeline ends).

Errors stay SQLAlchemy's: a driver error is raised as the `sqlalchemy.exc.DBAPIError` subclass `Connection.execute`
would raise (`OperationalError` for a locked database or a server that went away, which callers treat as "unavailable
now"), and a connection the server dropped is invalidated, so the pool does not hand it out again.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class Compiled:
    """One statement as its dialect's SQL, and the order of its parameters where the driver takes them by position."""

    sql: str
    positions: tuple[str, ...] | None
    """names in positional order (SQLite's `?`); None where the driver takes them by name (psycopg's `%(name)s`)"""

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        return values if self.positions is None else tuple(values[name] for name in self.positions)


def compile_for(dialect: Dialect, statement: ClauseElement, columns: Sequence[str] | None = None) -> Compiled:
    """`columns`: the columns an INSERT or UPDATE sets (their parameters are named after them)."""
    compiled = statement.compile(dialect=dialect, column_keys=list(columns) if columns is not None else None)
    assert isinstance(compiled, SQLCompiler)
    positions = compiled.positiontup if compiled.positional else None
    return Compiled(compiled.string, tuple(positions) if positions is not None else None)


class Result:
    """What one statement returned: its first row and the rows it changed. Read at once where the driver runs each
    statement when asked (SQLite); in a pipeline (psycopg), only once the pipeline is synced, which the first read of
    any of its results does."""

    def __init__(self, owner: Cursor, cursor: Any, sql: str) -> None:
        self._owner, self._cursor, self._sql = owner, cursor, sql
        self._read = False
        self._row: Any = None
        self._rowcount = -1
        if not owner.pipelined:
            self._fetch()

    def _fetch(self) -> None:
        if self._read:
            return
        try:
            self._owner.sync()
            self._row = self._cursor.fetchone() if self._cursor.description is not None else None
            self._rowcount = int(self._cursor.rowcount)
        except self._owner.engine.dialect.loaded_dbapi.Error as exc:
            raise self._owner.translated(exc, self._sql) from exc
        self._read = True

    def first(self) -> Any:
        self._fetch()
        return self._row

    @property
    def rowcount(self) -> int:
        self._fetch()
        return self._rowcount


class Cursor:
    """A DBAPI cursor that runs `Compiled` statements and raises SQLAlchemy's errors. `pipelined`: statements are sent
    without waiting for their results (psycopg's pipeline mode), so `submit` several, then read their `Result`s."""

    def __init__(self, engine: Engine, connection: Any, pipeline: Any = None) -> None:
        self.engine, self.connection, self.pipeline = engine, connection, pipeline
        self.pipelined = pipeline is not None
        self.cursor = connection.cursor()
        self._pipelined_cursors: list[Any] = []
        """a pipeline keeps one result per cursor: each statement whose result is read gets its own"""
        self._unsynced = False

    def sync(self) -> None:
        """In a pipeline: send what waits and read every result back (one round trip); otherwise nothing."""
        if self._unsynced:
            self._unsynced = False
            self.pipeline.sync()

    def submit(self, statement: Compiled, values: Mapping[str, Any]) -> Result:
        """Runs the statement (in a pipeline: sends it); its result is read from the returned `Result`."""
        cursor = self.cursor
        if self.pipelined:
            cursor = self.connection.cursor()
            self._pipelined_cursors.append(cursor)
        parameters = statement.parameters(values)
        try:
            cursor.execute(statement.sql, parameters)
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self.translated(exc, statement.sql, parameters) from exc
        self._unsynced = self.pipelined
        return Result(self, cursor, statement.sql)

    def send(self, statement: Compiled, values: Mapping[str, Any]) -> None:
        """Runs the statement (in a pipeline: sends it) and reads nothing back: a statement that refuses the
        transaction by failing (a unique key, a check in the server) needs no result read before COMMIT."""
        parameters = statement.parameters(values)
        try:
            self.cursor.execute(statement.sql, parameters)
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self.translated(exc, statement.sql, parameters) from exc
        self._unsynced = self.pipelined

    def execute_many(self, statement: Compiled, rows: Sequence[Mapping[str, Any]]) -> None:
        parameters = [statement.parameters(values) for values in rows]
        try:
            self.cursor.executemany(statement.sql, parameters)
            self._unsynced = self.pipelined
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self.translated(exc, statement.sql, parameters) from exc

    def first(self, statement: Compiled, values: Mapping[str, Any]) -> Any:
        return self.submit(statement, values).first()

    def translated(self, exc: Exception, sql: str | None = None, parameters: Any = None) -> BaseException:
        return translated(self.engine, self.connection, exc, sql, parameters, self.cursor)

    def close(self) -> None:
        for cursor in (self.cursor, *self._pipelined_cursors):
            with suppress(Exception):
                cursor.close()


class Connections:
    """Where an engine's driver connections come from: the pool, for each use; or, `held`, one per thread kept
    checked out for the thread's life, for a process whose few threads each do one thing at a time (a solo worker):
    a checkout and a check-in cost a third of a read on SQLite. A held connection the server dropped is replaced."""

    def __init__(self, engine: Engine, held: bool = False) -> None:
        self.engine, self.held = engine, held
        self._local = threading.local()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        if not self.held:
            connection = self.engine.raw_connection()
            try:
                yield connection
            finally:
                connection.close()
            return
        kept: Any = getattr(self._local, "connection", None)
        if kept is None or not kept.is_valid:
            kept = self._local.connection = self.engine.raw_connection()
        yield kept


@contextmanager
def reading(connections: Connections) -> Iterator[Cursor]:
    """A cursor on a connection of a reading engine (autocommit: each statement is its own snapshot; the cursor is
    closed after use, so SQLite keeps no read transaction open)."""
    with connections.connection() as connection:
        cursor = Cursor(connections.engine, connection)
        try:
            yield cursor
        finally:
            cursor.close()


@contextmanager
def transaction(connections: Connections, begin: Callable[[Any], None] | None = None) -> Iterator[Cursor]:
    """A cursor inside one transaction, committed when the block ends, rolled back if it raises (a connection whose
    rollback failed is invalidated, so none is reused in an unknown state). `begin(driver_connection)`: how this
    database starts a write transaction (SQLite: `BEGIN IMMEDIATE`); None where the driver begins one by itself
    (psycopg)."""
    with connections.connection() as connection:
        yield from _transaction(connections.engine, connection, begin)


def _transaction(engine: Engine, connection: Any, begin: Callable[[Any], None] | None) -> Iterator[Cursor]:
    cursor: Cursor | None = None
    try:
        with _pipeline(engine, connection) as pipeline:
            cursor = Cursor(engine, connection, pipeline)
            if begin is not None:
                try:
                    begin(connection.driver_connection)
                except engine.dialect.loaded_dbapi.Error as exc:
                    raise cursor.translated(exc) from exc
            yield cursor
            try:
                if pipeline is not None:  # sent with the statements when the pipeline ends: one round trip
                    cursor.cursor.execute("COMMIT")
                else:
                    connection.commit()
            except engine.dialect.loaded_dbapi.Error as exc:
                raise cursor.translated(exc) from exc
    except BaseException:
        if connection.is_valid:
            try:
                connection.rollback()
            except Exception as exc:  # noqa: BLE001 - the original error is the one to raise
                connection.invalidate(exc)
        raise
    finally:
        if cursor is not None:
            cursor.close()


@functools.cache
def _psycopg_pipelines() -> bool:
    import psycopg

    return psycopg.Pipeline.is_supported()


@contextmanager
def _pipeline(engine: Engine, connection: Any) -> Iterator[Any]:
    """psycopg's pipeline mode, where the driver has one: a transaction's BEGIN, statements and COMMIT go in one round
    trip instead of one each, sent and read back when the pipeline ends (or earlier, when a result is read). psycopg
    built on a libpq older than 14 has none: statements then go one by one."""
    if engine.dialect.driver != "psycopg" or not _psycopg_pipelines():
        yield None
        return
    try:
        with connection.driver_connection.pipeline() as pipeline:
            yield pipeline
    except engine.dialect.loaded_dbapi.Error as exc:
        raise translated(engine, connection, exc) from exc


def translated(engine: Engine, connection: Any, exc: Exception, sql: str | None = None, parameters: Any = None,
               cursor: Any = None) -> BaseException:
    """The error `Connection.execute` would have raised; the connection is invalidated if the server dropped it. Needs
    no cursor of its own: opening one on a connection the server dropped would fail before anything is translated."""
    dialect = engine.dialect
    dropped = dialect.is_disconnect(exc, connection.dbapi_connection, cursor)  # type: ignore[arg-type]
    if dropped:
        connection.invalidate(exc)
    return sqlalchemy.exc.DBAPIError.instance(sql, parameters, exc, dialect.loaded_dbapi.Error,
                                              connection_invalidated=dropped, dialect=dialect)


def attached(connection: sqlalchemy.Connection) -> Cursor:
    """A cursor inside a transaction SQLAlchemy holds open (the monolith's): statements join it, the owner commits."""
    return Cursor(connection.engine, connection.connection)
