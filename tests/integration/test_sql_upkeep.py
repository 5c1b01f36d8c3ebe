"""A SQL store's housekeeping pass (the workers' relay runs it, the monolith's dispatcher too): inbox rows past their
TTL purged, and on a PostgreSQL server whose autovacuum does not run, VACUUM and ANALYZE of the store's tables by the
server's autovacuum thresholds (events/adapters/sql/upkeep.py); with autovacuum on, those are left to the server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, text

from events.adapters.sql.engine import Engines
from events.adapters.sql.schema import documents, inbox, outbox
from events.adapters.sql.store import SqlStore
from events.adapters.sql.upkeep import TableUpkeep
from events.settings import BusSettings
from shop.bootstrap import bootstrap_monolith
from tests.support.databases import emptied, postgres_database, postgres_missing
from tests.support.waiting import wait_until

ROWS = 400


@pytest.fixture
def database() -> Iterator[Engines]:
    if missing := postgres_missing():
        pytest.skip(missing)
    found = emptied(postgres_database("upkeep"))
    TableUpkeep(found.read, needed=True)()  # whatever emptying the tables left due
    yield found
    found.dispose()


def churn(database: Engines) -> None:
    """What a busy service does to its tables: outbox rows inserted and deleted, documents created; the session's
    statistics sent to the server when it goes idle (`pg_stat_force_next_flush`, PostgreSQL 15)."""
    now = time.time()
    with database.write.begin() as connection:
        connection.execute(insert(outbox), [
            {"id": f"m{n}", "message": "{}", "created_at": now, "due_at": now} for n in range(ROWS)])
        connection.execute(delete(outbox))
        connection.execute(insert(documents), [
            {"service": "svc", "collection": "order", "key": f"order-{n:04}", "version": 1, "body": "{}"}
            for n in range(ROWS)])
        connection.execute(text("SELECT pg_stat_force_next_flush()"))


def table_stats(database: Engines) -> dict[str, Any]:
    with database.read.connect() as connection:
        return {row.relname: row for row in connection.execute(text(
            "SELECT relname, n_dead_tup, n_mod_since_analyze, last_vacuum, last_analyze FROM pg_stat_user_tables"))}


def planner_rows(database: Engines, table: str) -> float:
    """The rows the planner believes `table` has (pg_class.reltuples: -1 until it is first vacuumed or analyzed)."""
    with database.read.connect() as connection:
        return float(connection.execute(text("SELECT reltuples FROM pg_class WHERE relname = :table"),
                                        {"table": table}).scalar_one())


def test_without_autovacuum_the_housekeeping_vacuums_and_analyzes_what_is_due(database: Engines) -> None:
    store = SqlStore(database, BusSettings(), outbox=False)
    assert store.upkeep is not None
    store.upkeep.needed = True  # as on a server with autovacuum = off
    now = time.time()
    with database.write.begin() as connection:
        connection.execute(insert(inbox), [{"consumer": "svc", "event_id": "old", "handled_at": now - 7200},
                                           {"consumer": "svc", "event_id": "new", "handled_at": now}])
    churn(database)
    wait_until(lambda: table_stats(database)["outbox"].n_dead_tup >= ROWS, message="the churn's statistics")

    store.housekeeping(inbox_older_than=now - 3600)

    with database.read.connect() as connection:
        assert connection.execute(select(inbox.c.event_id)).scalars().all() == ["new"]

    after = table_stats(database)
    assert after["outbox"].n_dead_tup == 0 and after["outbox"].last_vacuum is not None
    assert after["documents"].n_mod_since_analyze == 0 and after["documents"].last_analyze is not None
    assert planner_rows(database, "documents") == ROWS
    assert TableUpkeep(database.read, needed=True)() == [], "a second pass finds nothing due"


def test_only_what_crossed_the_thresholds_is_touched(database: Engines) -> None:
    churn(database)
    wait_until(lambda: table_stats(database)["outbox"].n_dead_tup >= ROWS, message="the churn's statistics")

    done = TableUpkeep(database.read, needed=True)()

    assert "VACUUM (ANALYZE, SKIP_LOCKED) outbox" in done
    assert any(statement.endswith(" documents") for statement in done)
    assert not any(statement.endswith((" inbox", " dead_letters")) for statement in done), done


def test_with_autovacuum_on_the_server_does_it(database: Engines) -> None:
    churn(database)
    wait_until(lambda: table_stats(database)["outbox"].n_dead_tup >= ROWS, message="the churn's statistics")

    assert TableUpkeep(database.read, needed=False)() == []
    assert table_stats(database)["outbox"].n_dead_tup >= ROWS


def test_it_asks_the_server_whether_autovacuum_runs(database: Engines) -> None:
    with database.read.connect() as connection:
        running = connection.execute(text("SHOW autovacuum")).scalar_one() == "on"
    upkeep = TableUpkeep(database.read)

    upkeep()

    assert upkeep.needed is (not running)


def test_the_monolith_purges_its_inbox_while_its_dispatcher_runs(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("SHOP_MONOLITH_DATABASE_URL", f"sqlite:///{tmp_path / 'monolith.sqlite3'}")
    monkeypatch.setenv("SHOP_GATEWAY_LEDGER_PATH", str(tmp_path / "gateway.sqlite3"))
    bus = bootstrap_monolith(BusSettings(var_dir=tmp_path, redeliver_after=2.0, inbox_ttl=60))
    now = time.time()
    with bus.store.engines.write.begin() as connection:
        connection.execute(insert(inbox), [{"consumer": "svc", "event_id": "old", "handled_at": now - 120},
                                           {"consumer": "svc", "event_id": "new", "handled_at": now}])

    def remembered() -> list[str]:
        with bus.store.engines.read.connect() as connection:
            return list(connection.execute(select(inbox.c.event_id)).scalars())

    bus.start()
    try:
        wait_until(lambda: remembered() == ["new"], timeout=10, message="the old inbox row purged")
    finally:
        bus.stop()
        bus.store.engines.dispose()
