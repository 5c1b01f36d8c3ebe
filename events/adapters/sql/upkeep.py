"""VACUUM and ANALYZE of a service's tables where the PostgreSQL server's autovacuum does not run.

A store's tables churn: an outbox row is inserted and deleted per event, inbox rows are purged after their TTL, a
document gets a new row version at each change. PostgreSQL's autovacuum daemon vacuums such tables (their dead rows
become free space again) and analyzes them (the planner's statistics). A server can run with `autovacuum = off`;
then nothing does either, and the damage is not only disk: a table never analyzed keeps the planner's guess of a
handful of rows, so a lookup of 64 orders by key (`SqlStore.documents`) was planned as a walk over every order of
the collection, filtering the keys (EXPLAIN ANALYZE after 5177 orders: 3.3 ms, growing with the table), and the
benchmark's PostgreSQL pipeline lost a fifth of its throughput within a minute.

So a store's housekeeping pass (the relay's, `Wiring.relay`) asks the server once whether its autovacuum runs, and
where it does not, does its work for the store's own database with the server's own commands and thresholds: a table
whose dead rows exceed `autovacuum_vacuum_threshold + autovacuum_vacuum_scale_factor * rows` is vacuumed and
analyzed, one whose changes since its last analysis exceed the analyze threshold and scale factor is analyzed (the
formula autovacuum applies, with the server's settings). `SKIP_LOCKED`: a table another process is vacuuming is left
to it. With autovacuum on (PostgreSQL's default), this does nothing but that one question.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, text

log = logging.getLogger(__name__)

DUE = text("""
SELECT s.relname,
       s.n_dead_tup > current_setting('autovacuum_vacuum_threshold')::float8
                      + current_setting('autovacuum_vacuum_scale_factor')::float8 * greatest(c.reltuples, 0),
       s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8
                      + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0)
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema()
ORDER BY s.relname
""")
"""(table, due for VACUUM, due for ANALYZE) for each table of the database's current schema: the store's own"""


class TableUpkeep:
    """One pass: VACUUM (ANALYZE) or ANALYZE what is due, on a PostgreSQL engine in autocommit mode (VACUUM runs
    outside a transaction). `needed`: None asks the server whether its autovacuum is off, once."""

    def __init__(self, engine: Engine, needed: bool | None = None) -> None:
        self.engine, self.needed = engine, needed

    def __call__(self) -> list[str]:
        """The statements run in this pass."""
        with self.engine.connect() as connection:
            if self.needed is None:
                self.needed = not connection.execute(text("SELECT current_setting('autovacuum')::bool")).scalar_one()
                if self.needed:
                    log.warning("autovacuum is off on the PostgreSQL server of %s: the store's housekeeping vacuums "
                                "and analyzes its tables itself, by the server's autovacuum thresholds",
                                self.engine.url.render_as_string(hide_password=True))
            if not self.needed:
                return []
            quote = self.engine.dialect.identifier_preparer.quote
            done = []
            for table, vacuum, analyze in connection.execute(DUE).all():
                if not (vacuum or analyze):
                    continue
                statement = f"{'VACUUM (ANALYZE, SKIP_LOCKED)' if vacuum else 'ANALYZE (SKIP_LOCKED)'} {quote(table)}"
                connection.execute(text(statement))
                done.append(statement)
            if done:
                log.info("table upkeep: %s", "; ".join(done))
            return done
