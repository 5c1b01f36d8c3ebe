"""Schema migrations with Alembic, run programmatically against one database (`shop db upgrade`, `shop up`, the
compose declare step). Processes that only use a database check that it is at the head revision and refuse to start
otherwise, so several processes never race to migrate one database."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from events.adapters.sql.engine import Engines

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
    config = _config()
    with engines.write.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return head()


def check(engines: Engines) -> None:
    """Raise when the database is not at the head revision (a process must not run on an old schema)."""
    at = current(engines)
    if at != head():
        raise RuntimeError(
            f"the database at {engines.write.url.render_as_string(hide_password=True)} is at schema revision {at}, "
            f"not {head()}: run `shop db upgrade`"
        )
