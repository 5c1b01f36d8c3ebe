"""Dead letters in a service's own database (events/deadletters.py gives the record's shape); a service over its cap
evicts its oldest records, counted in `dead_letter_evictions`."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from events.adapters.sql.engine import Engines
from events.adapters.sql.schema import dead_letter_evictions, dead_letters
from events.deadletters import DEFAULT_LIMITS, DeadLetterLimits, dead_letter_record

log = logging.getLogger(__name__)


class SqlDeadLetters:
    def __init__(self, engines: Engines, limits: DeadLetterLimits = DEFAULT_LIMITS) -> None:
        self.engines, self.limits = engines, limits

    def add(self, service: str, reason: str, detail: str, message: Any, attempts: int) -> dict[str, Any]:
        record = dead_letter_record(service, reason, detail, message, attempts, self.limits)
        self.store(record)
        log.warning("dead-lettered %s in %s: %s %s", record["id"], service, reason, detail[:200])
        return record

    def store(self, record: dict[str, Any]) -> None:
        name = record["service"]
        with self.engines.write.begin() as connection:
            dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
            row = dialect_insert(dead_letters).values(id=record["id"], service=name, dead_at=record["dead_at"],
                                                      record=json.dumps(record))
            connection.execute(row.on_conflict_do_update(  # the same event again: the newer record replaces it
                index_elements=[dead_letters.c.id],
                set_={"service": row.excluded.service, "dead_at": row.excluded.dead_at, "record": row.excluded.record}))
            evicted = self._evict(connection, name)
        if evicted:
            log.warning("dead letters of %s over the cap of %d: evicted the %d oldest", name,
                        self.limits.per_service, evicted)

    def _evict(self, connection: Connection, service: str) -> int:
        count = connection.execute(select(func.count()).where(dead_letters.c.service == service)).scalar_one()
        over = int(count) - self.limits.per_service
        if over <= 0:
            return 0
        oldest = (select(dead_letters.c.id).where(dead_letters.c.service == service)
                  .order_by(dead_letters.c.dead_at).limit(over))
        evicted = int(connection.execute(delete(dead_letters).where(dead_letters.c.id.in_(oldest))).rowcount or 0)
        dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        count_them = dialect_insert(dead_letter_evictions).values(service=service, evicted=evicted)
        connection.execute(count_them.on_conflict_do_update(
            index_elements=[dead_letter_evictions.c.service],
            set_={"evicted": dead_letter_evictions.c.evicted + count_them.excluded.evicted}))
        return evicted

    def list(self, service: str | None = None) -> list[dict[str, Any]]:
        query = select(dead_letters.c.record).order_by(dead_letters.c.dead_at)
        if service:
            query = query.where(dead_letters.c.service == service)
        with self.engines.read.connect() as connection:
            return [dict(json.loads(raw)) for raw in connection.execute(query).scalars()]

    def get(self, record_id: str) -> dict[str, Any] | None:
        with self.engines.read.connect() as connection:
            raw = connection.execute(select(dead_letters.c.record).where(dead_letters.c.id == record_id)).scalar()
        return None if raw is None else dict(json.loads(raw))

    def remove(self, record: dict[str, Any]) -> bool:
        with self.engines.write.begin() as connection:
            return bool(connection.execute(delete(dead_letters).where(dead_letters.c.id == record["id"])).rowcount)

    def purge(self, service: str | None = None) -> int:
        query = delete(dead_letters)
        if service:
            query = query.where(dead_letters.c.service == service)
        with self.engines.write.begin() as connection:
            return int(connection.execute(query).rowcount or 0)

    def counts(self) -> dict[str, int]:
        query = select(dead_letters.c.service, func.count()).group_by(dead_letters.c.service)
        with self.engines.read.connect() as connection:
            return {service: int(count) for service, count in connection.execute(query)}

    def evicted(self) -> dict[str, int]:
        with self.engines.read.connect() as connection:
            rows = connection.execute(select(dead_letter_evictions.c.service, dead_letter_evictions.c.evicted))
            return {service: int(count) for service, count in rows}
