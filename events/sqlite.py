"""SQLite files that several processes open at once (a service's store, the simulated gateway's books)."""

from __future__ import annotations

import sqlite3
import time


def use_wal(connection: sqlite3.Connection, timeout_s: float) -> None:
    """Put the file in WAL mode (it stays so). Processes opening a new file at the same moment all try to switch it,
    and SQLite answers "database is locked" at once to one that cannot get the lock the switch needs, without waiting
    on its busy timeout: that one tries again, in short steps, for up to `timeout_s` seconds."""
    deadline, pause = time.monotonic() + timeout_s, 0.005
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
