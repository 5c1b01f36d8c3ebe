"""Two processes writing one service's SQLite file (its API and its worker) take turns at the write lock; the waiter
gets it shortly after it is freed, not after SQLite's own busy handler's next sleep. Checkpoints run in the
background, not inside a commit."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import text

from events.adapters.sql import engine as engine_module
from events.adapters.sql.engine import WAL_AUTOCHECKPOINT_PAGES, engines, take_write_lock


def _holder(path: Path, hold_s: float, held: threading.Event) -> None:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(hold_s)
    connection.execute("COMMIT")
    connection.close()


def _locked_for(path: Path, hold_s: float) -> tuple[threading.Thread, sqlite3.Connection]:
    """Another writer holds the write lock for `hold_s` from now; returns it and a connection of our own."""
    held = threading.Event()
    holder = threading.Thread(target=_holder, args=(path, hold_s, held))
    holder.start()
    held.wait(5)
    return holder, sqlite3.connect(path, isolation_level=None)


def _database(tmp_path: Path) -> Path:
    path = tmp_path / "db.sqlite3"
    database = engines(f"sqlite:///{path}")
    with database.write.begin() as connection:
        connection.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    database.dispose()
    return path


def test_a_writer_gets_the_lock_within_a_few_ms_of_its_release_and_keeps_its_busy_timeout(tmp_path: Path) -> None:
    holder, connection = _locked_for(_database(tmp_path), 0.012)
    connection.execute("PRAGMA busy_timeout = 30000")
    started = time.monotonic()
    assert take_write_lock(connection, 30_000)
    waited = time.monotonic() - started
    holder.join()
    connection.execute("COMMIT")
    # SQLite's handler would have slept 1 + 2 + 5 + 10 ms (18 ms) before the attempt that finds the lock free.
    assert 0.008 < waited < 0.0175, waited
    assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_a_lock_held_longer_is_left_to_sqlites_own_wait_and_the_transaction_still_begins(tmp_path: Path) -> None:
    path = _database(tmp_path)
    holder, connection = _locked_for(path, 0.3)
    assert not take_write_lock(connection, 30_000), "gives up its own steps after 50 ms"
    database = engines(f"sqlite:///{path}")
    try:
        with database.write.begin() as writer:  # the engine's BEGIN: short steps, then SQLite's busy handler
            writer.execute(text("INSERT INTO t VALUES ('after the holder')"))
    finally:
        database.dispose()
    holder.join()
    assert sqlite3.connect(path).execute("SELECT k FROM t").fetchall() == [("after the holder",)]


def test_checkpoints_run_in_a_background_thread_not_inside_a_commit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "WAL_CHECKPOINT_INTERVAL", 1.0)  # read when the engines are made
    path = _database(tmp_path)
    database = engines(f"sqlite:///{path}")
    try:
        with database.write.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_AUTOCHECKPOINT_PAGES
        started = time.monotonic()
        for n in range(400):  # about 1.6 MB of WAL: past SQLite's default threshold (1000 pages), below ours
            with database.write.begin() as connection:
                connection.execute(text("INSERT INTO t VALUES (:k)"), {"k": f"{n:04d}" + "x" * 3000})
        assert time.monotonic() - started < 0.9, "written before the first background round"
        assert path.stat().st_size < 100_000, "no commit copied the WAL into the database file"
        deadline = time.monotonic() + 5
        while path.stat().st_size < 1_000_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size >= 1_000_000, "the background checkpoint copied it"
    finally:
        database.dispose()
    assert not [t for t in threading.enumerate() if t.name == f"wal-checkpoint {path.name}"], "stopped with the engines"
