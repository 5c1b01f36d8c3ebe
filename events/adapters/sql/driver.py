"""The hot path's statements, built by SQLAlchemy once and run on the driver's own connection.

A unit of work runs a handful of statements per message (its reads; then, in one transaction, the inbox mark, each
document, the outbox rows). SQLAlchemy builds each of them once per dialect (`compile`); `run` executes them on the
DBAPI connection of a pooled connection (`Engine.raw_connection`, SQLAlchemy's documented way to the driver), which
skips what `Connection.execute` adds per call: an execution context, a result object and type processing that these
plain integer and text columns do not need. On SQLite that was more than the statements themselves: a read and a
handled message's transaction took 42 and 512 µs through `Connection.execute` in a timing loop here, against some
75 µs for both through the driver.

Errors stay SQLAlchemy's: a driver error is raised as the `sqlalchemy.exc.DBAPIError` subclass `Connection.execute`
would raise (`OperationalError` for a locked database or a server that went away, which callers treat as "unavailable
now"), and a connection the server dropped is invalidated, so the pool does not hand it out again.
"""

from __future__ import annotations

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


class Cursor:
    """A DBAPI cursor that runs `Compiled` statements and raises SQLAlchemy's errors."""

    def __init__(self, engine: Engine, connection: Any) -> None:
        self.engine, self.connection = engine, connection
        self.cursor = connection.cursor()

    def execute(self, statement: Compiled, values: Mapping[str, Any]) -> int:
        """Runs the statement; returns the rows it changed (for an UPDATE or DELETE)."""
        parameters = statement.parameters(values)
        try:
            self.cursor.execute(statement.sql, parameters)
            return int(self.cursor.rowcount)
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self.translated(exc, statement.sql, parameters) from exc

    def execute_many(self, statement: Compiled, rows: Sequence[Mapping[str, Any]]) -> None:
        parameters = [statement.parameters(values) for values in rows]
        try:
            self.cursor.executemany(statement.sql, parameters)
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self.translated(exc, statement.sql, parameters) from exc

    def first(self, statement: Compiled, values: Mapping[str, Any]) -> Any:
        self.execute(statement, values)
        return self.cursor.fetchone()

    def translated(self, exc: Exception, sql: str | None = None, parameters: Any = None) -> BaseException:
        """The error `Connection.execute` would have raised; the connection is invalidated if the server dropped it."""
        dialect = self.engine.dialect
        dropped = dialect.is_disconnect(exc, self.connection.dbapi_connection, self.cursor)  # type: ignore[arg-type]
        if dropped:
            self.connection.invalidate(exc)
        return sqlalchemy.exc.DBAPIError.instance(sql, parameters, exc, dialect.loaded_dbapi.Error,
                                                  connection_invalidated=dropped, dialect=dialect)

    def close(self) -> None:
        with suppress(Exception):
            self.cursor.close()


@contextmanager
def reading(engine: Engine) -> Iterator[Cursor]:
    """A cursor on a pooled connection of a reading engine (autocommit: each statement is its own snapshot)."""
    connection = engine.raw_connection()
    cursor: Cursor | None = None
    try:
        cursor = Cursor(engine, connection)
        yield cursor
    finally:
        if cursor is not None:
            cursor.close()
        connection.close()


@contextmanager
def transaction(engine: Engine, begin: Callable[[Any], None] | None = None) -> Iterator[Cursor]:
    """A cursor inside one transaction on a pooled connection, committed when the block ends, rolled back if it
    raises. `begin(driver_connection)`: how this database starts a write transaction (SQLite: `BEGIN IMMEDIATE`);
    None where the driver begins one by itself (psycopg)."""
    connection = engine.raw_connection()
    cursor: Cursor | None = None
    try:
        cursor = Cursor(engine, connection)
        if begin is not None:
            try:
                begin(connection.driver_connection)
            except engine.dialect.loaded_dbapi.Error as exc:
                raise cursor.translated(exc) from exc
        yield cursor
        try:
            connection.commit()
        except engine.dialect.loaded_dbapi.Error as exc:
            raise cursor.translated(exc) from exc
    except BaseException:
        if connection.is_valid:
            with suppress(Exception):
                connection.rollback()
        raise
    finally:
        if cursor is not None:
            cursor.close()
        connection.close()


def attached(connection: sqlalchemy.Connection) -> Cursor:
    """A cursor inside a transaction SQLAlchemy holds open (the monolith's): statements join it, the owner commits."""
    return Cursor(connection.engine, connection.connection)
