"""Engines for a store's URL, tuned per database.

SQLite: WAL (readers never block the writer, several worker processes may share the file), a busy timeout instead
of an immediate "database is locked", and `BEGIN IMMEDIATE` for every write transaction, so two processes never
deadlock upgrading a read lock to a write lock. The wait for another process's write lock is short steps first
(`take_write_lock`): SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between attempts, so a
lock held for 2 ms cost a waiter 8 ms, and the tail of a service written by its API and its worker at once grew
with it. `synchronous=NORMAL` in WAL mode keeps every committed transaction
across a process crash (not across a power loss: the last transactions before it may be lost). Checkpoints (copying
the WAL back into the database file, with its fsyncs) run in a background thread every `WAL_CHECKPOINT_INTERVAL`
(`WalCheckpointer`, run by `Periodic`) instead of inside whichever commit crossed SQLite's 1000-page threshold: that
commit took milliseconds instead of tens of microseconds, and an order crossing five databases met one often enough
to set the p99 (a throwaway loop of 6000 small transactions here: p99.9 3.09 ms with SQLite's automatic checkpoints,
0.20 ms without). The automatic checkpoint stays as a backstop, at `WAL_AUTOCHECKPOINT_PAGES`. Reads go through a
second engine in autocommit mode (every read is one statement, its own snapshot), so they take no lock at all and a
connection going back to the pool has nothing to roll back.

PostgreSQL: psycopg 3; `postgresql://` URLs are read as `postgresql+psycopg://`. The hot path's transactions
(driver.py) run on connections of the autocommit engine, the readers', and begin with a BEGIN sent in the pipeline
with their statements and their COMMIT: psycopg, left to begin a transaction itself, sends its BEGIN and waits for
the answer before anything else (a round trip of its own in pipeline mode).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from events.messaging import Periodic
from events.sqlite import use_wal

log = logging.getLogger(__name__)

WAL_CHECKPOINT_INTERVAL = 0.5
"""Seconds between a SQLite database's background checkpoints."""
WAL_AUTOCHECKPOINT_PAGES = 10_000
"""SQLite's automatic checkpoint inside a commit, kept only as a backstop (SQLite's default is 1000 pages): the
background checkpoints keep the WAL far below it, and should they stop, the WAL still stays bounded."""


class WalCheckpointer:
    """One pass checkpoints one SQLite database in WAL mode (run by a `Periodic` of its own), with a connection of its
    own: PASSIVE, so it never waits for or blocks a reader or a writer, and does nothing while another process holds
    the database (the next pass tries again)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def __call__(self) -> None:
        try:
            if self._connection is None:  # mode=rw: never creates the file (the engine does, on its first connect)
                self._connection = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=rw", uri=True,
                                                   timeout=0, isolation_level=None, check_same_thread=False)
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # locked, gone, or not a database yet: the next pass tries again
            log.debug("checkpoint of %s skipped: %s", self.path, exc)
            self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None


@dataclass(frozen=True)
class Engines:
    url: str
    write: Engine
    """transactions: BEGIN IMMEDIATE on SQLite"""
    read: Engine
    """single statements in autocommit mode (on PostgreSQL also the hot path's transactions: `transactions`)"""
    checkpoints: Periodic | None = None
    """a SQLite file's background checkpoints (`WalCheckpointer`)"""
    begin: Callable[[Any], None] | None = None
    """how a transaction of the hot path begins on a driver connection of `transactions` (SQLite: `BEGIN IMMEDIATE`;
    PostgreSQL: `BEGIN`, sent with the rest); None where the driver begins one by itself"""

    @property
    def is_sqlite(self) -> bool:
        return self.write.dialect.name == "sqlite"

    @property
    def transactions(self) -> Engine:
        """The engine whose driver connections run the hot path's transactions (driver.transaction, with `begin`):
        SQLite's writer; on PostgreSQL the autocommit one, each transaction begun by `begin` and ended by COMMIT or
        ROLLBACK before its connection goes back to the pool."""
        return self.write if self.is_sqlite else self.read

    def dispose(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.stop(wait=5)
            checkpointer = self.checkpoints.step
            if isinstance(checkpointer, WalCheckpointer):
                checkpointer.close()
        self.write.dispose()
        self.read.dispose()


def normalise(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def engines(url: str, busy_timeout_ms: int = 30_000) -> Engines:
    url = normalise(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # No pre-ping (a round trip per checkout): a connection broken by a server restart fails once, as
        # "unavailable" (the message goes back), and SQLAlchemy replaces the pool's connections.
        options: dict[str, Any] = {"pool_size": 5, "max_overflow": 5}
        return Engines(url, create_engine(url, **options),
                       create_engine(url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **options),
                       begin=begin_in_pipeline)
    on_disk = bool(parsed.database) and parsed.database != ":memory:"
    if on_disk:
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
    write = create_engine(url)
    read = create_engine(url, pool_reset_on_return=None)

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun explicitly, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        use_wal(dbapi_connection, busy_timeout_ms / 1000)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    def begin_immediate(connection: Any) -> None:
        if not take_write_lock(connection.connection.driver_connection, busy_timeout_ms):
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # still locked: SQLite's own wait, up to the busy timeout

    def begin_on_driver(driver_connection: sqlite3.Connection) -> None:
        if not take_write_lock(driver_connection, busy_timeout_ms):
            driver_connection.execute("BEGIN IMMEDIATE")

    event.listen(write, "connect", pragmas)
    event.listen(write, "begin", begin_immediate)
    event.listen(read, "connect", pragmas)
    if not on_disk:
        return Engines(url, write, read, begin=begin_on_driver)
    path = str(parsed.database)
    checkpoints = Periodic(f"wal-checkpoint {Path(path).name}", WAL_CHECKPOINT_INTERVAL, WalCheckpointer(path), ())
    return Engines(url, write, read, checkpoints.start(), begin=begin_on_driver)


def begin_in_pipeline(driver_connection: Any) -> None:
    """PostgreSQL (a connection in autocommit mode): BEGIN, sent with what follows it in psycopg's pipeline mode, or
    at once without it."""
    driver_connection.execute("BEGIN")


WRITE_LOCK_STEPS = (0.0001, 0.002, 0.05)
"""First pause, longest pause, and how long (seconds) `take_write_lock` keeps trying before SQLite's own wait."""


def take_write_lock(
    connection: sqlite3.Connection, busy_timeout_ms: int, sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """BEGIN IMMEDIATE, retried after 0.1 ms, then twice as long each time up to 2 ms, for 50 ms at most: True once it
    began, False if it did not (the lock is still held: the caller then waits with SQLite's busy handler). The busy
    timeout is off only for these attempts, so no other statement loses SQLite's wait."""
    first, longest, patience = WRITE_LOCK_STEPS
    connection.execute("PRAGMA busy_timeout = 0")
    try:
        pause, give_up = first, clock() + patience
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) & 0xFF != sqlite3.SQLITE_BUSY:
                    return False  # not a lock: the caller's own BEGIN raises it, as SQLAlchemy reports errors
            if clock() + pause > give_up:
                return False
            sleep(pause)
            pause = min(pause * 2, longest)
    finally:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
