"""Dead letters in Redis: one hash per service, id -> record (events/deadletters.py gives the record's shape)."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from events.adapters.redis.keys import Keys
from events.deadletters import dead_letter_record

log = logging.getLogger(__name__)


class RedisDeadLetters:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, service: str, reason: str, detail: str, message: Any, attempts: int) -> dict[str, Any]:
        record = dead_letter_record(service, reason, detail, message, attempts)
        self.store(record)
        log.warning("dead-lettered %s in %s: %s %s", record["id"], service, reason, detail[:200])
        return record

    def store(self, record: dict[str, Any]) -> None:
        self.redis.hset(Keys.dead_letters(record["service"]), record["id"], json.dumps(record))

    def services(self) -> list[str]:
        return sorted(key.decode().rsplit(":", 1)[1] for key in self.redis.scan_iter(match=Keys.dead_letters("*")))

    def list(self, service: str | None = None) -> list[dict[str, Any]]:
        records = []
        for name in [service] if service else self.services():
            records += [json.loads(raw) for raw in self.redis.hvals(Keys.dead_letters(name))]
        return sorted(records, key=lambda record: record["dead_at"])

    def counts(self) -> dict[str, int]:
        return {name: int(self.redis.hlen(Keys.dead_letters(name))) for name in self.services()}

    def get(self, record_id: str) -> dict[str, Any] | None:
        for name in self.services():
            raw = self.redis.hget(Keys.dead_letters(name), record_id)
            if raw is not None:
                return dict(json.loads(raw))
        return None

    def remove(self, record: dict[str, Any]) -> bool:
        return bool(self.redis.hdel(Keys.dead_letters(record["service"]), record["id"]))

    def purge(self, service: str | None = None) -> int:
        """Delete them for good; returns how many were deleted."""
        names = [service] if service else self.services()
        if not names:
            return 0
        with self.redis.pipeline(transaction=True) as pipe:
            for name in names:
                pipe.hlen(Keys.dead_letters(name))
            pipe.delete(*(Keys.dead_letters(name) for name in names))
            *counts, _ = pipe.execute()
        return sum(int(count) for count in counts)
