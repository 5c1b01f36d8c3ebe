"""SQL databases as tests see them: a SQLite file per test, or a PostgreSQL database per service name (created once,
migrated once, emptied before each test). PostgreSQL tests skip with the reason when no server answers."""

from __future__ import annotations

import functools
import os

from sqlalchemy import create_engine, text

from events.adapters.sql import migrate
from events.adapters.sql.engine import Engines, engines
from events.adapters.sql.schema import metadata

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
"""A server where the tests may create databases (`shop_test_*`)."""


@functools.cache
def postgres_missing() -> str | None:
    try:
        with create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                           connect_args={"connect_timeout": 3}).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable" for a skip reason
        host = POSTGRES_URL.rsplit("@", 1)[-1]
        return f"PostgreSQL variant: no server answers at {host} ({exc.__class__.__name__}); set TEST_POSTGRES_URL"
    return None


@functools.cache
def postgres_database(name: str) -> str:
    """The URL of database `shop_test_<name>` (created and migrated on first use in this test session)."""
    database = f"shop_test_{name}".lower()
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if not connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}).first():
            connection.execute(text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{database}"
    migrate.upgrade(engines(url))
    return url


def emptied(url: str) -> Engines:
    """Engines on `url`, migrated, with every table emptied."""
    found = engines(url)
    migrate.upgrade(found)
    with found.write.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            connection.execute(table.delete())
    return found


def drop_postgres_databases(prefix: str) -> None:
    """Drop every database whose name starts with `prefix` (what one test run created)."""
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        names = connection.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :prefix"),
                                   {"prefix": prefix.replace("_", "\\_") + "%"}).scalars().all()
        for name in names:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
