"""Switching a shared SQLite file to WAL while another process holds its lock (events/sqlite.py)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from events.sqlite import use_wal


def _held_exclusively(path: Path, seconds: float) -> threading.Thread:
    """Another connection takes the file's exclusive lock, holds it for `seconds`, then lets go."""
    taken = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        taken.set()
        threading.Event().wait(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(5)
    return thread


def test_the_switch_to_wal_waits_for_a_lock_sqlite_answers_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    mine = sqlite3.connect(path, timeout=0, isolation_level=None)  # SQLite's own wait: none
    holder = _held_exclusively(path, 0.3)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        mine.execute("PRAGMA journal_mode = WAL")  # what the processes met before

    use_wal(mine, timeout_s=10)

    holder.join()
    assert mine.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_lock_held_past_the_timeout_still_fails(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    mine = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder = _held_exclusively(path, 1.0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        use_wal(mine, timeout_s=0.1)
    holder.join()
