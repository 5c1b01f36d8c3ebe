"""Dead letters in a service's own database (events/deadletters.py gives the record's shape)."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import delete, func, insert, select

from events.adapters.sql.engine import Engines
from events.adapters.sql.schema import dead_letters
from events.deadletters import dead_letter_record

log = logging.getLogger(__name__)


class SqlDeadLetters:
    def __init__(self, engines: Engines) -> None:
        self.engines = engines

    def add(self, service: str, reason: str, detail: str, message: Any, attempts: int) -> dict[str, Any]:
        record = dead_letter_record(service, reason, detail, message, attempts)
        self.store(record)
        log.warning("dead-lettered %s in %s: %s %s", record["id"], service, reason, detail[:200])
        return record

    def store(self, record: dict[str, Any]) -> None:
        with self.engines.write.begin() as connection:
            connection.execute(insert(dead_letters).values(
                id=record["id"], service=record["service"], dead_at=record["dead_at"], record=json.dumps(record)))

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
