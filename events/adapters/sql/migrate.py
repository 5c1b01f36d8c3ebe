"""Schema migrations with Alembic, run programmatically against one database: by `shop db upgrade`, `shop up`, the
compose declare step, and by every process before it uses a database (a no-op once it is at the head revision).

Several processes may start at once: on PostgreSQL the upgrade holds a transaction-scoped advisory lock, on SQLite the
upgrade's transaction is BEGIN IMMEDIATE (engine.py), so one process migrates and the others find the head revision.
A PostgreSQL database that does not exist yet is created first (through the server's `postgres` database).
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from events.adapters.sql.engine import Engines

MIGRATION_LOCK = 4_147_483_647
"""The advisory lock key all shop processes take around a PostgreSQL upgrade."""

SCRIPT_LOCATION = "events.adapters.sql:migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(engines: Engines) -> str | None:
    with engines.write.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engines: Engines) -> str:
    """Bring the database to the head revision (idempotent); returns the revision it is at."""
    if not engines.is_sqlite:
        create_database_if_missing(engines)
    config = _config()
    with engines.write.begin() as connection:
        if not engines.is_sqlite:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return head()


def create_database_if_missing(engines: Engines) -> None:
    try:
        with engines.read.connect():
            return
    except OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    url = make_url(engines.url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                        {"name": url.database}).first()
            if not exists:
                try:
                    connection.execute(text(f'CREATE DATABASE "{url.database}"'))
                except ProgrammingError as exc:  # another process created it meanwhile
                    if "already exists" not in str(exc):
                        raise
    finally:
        admin.dispose()


def check(engines: Engines) -> None:
    """Raise when the database is not at the head revision (a process must not run on an old schema)."""
    at = current(engines)
    if at != head():
        raise RuntimeError(
            f"the database at {engines.write.url.render_as_string(hide_password=True)} is at schema revision {at}, "
            f"not {head()}: run `shop db upgrade`"
        )
