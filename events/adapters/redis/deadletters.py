"""Dead letters in Redis: one hash per service, id -> record (events/deadletters.py gives the record's shape), beside
a sorted set of the ids by age; a store over its cap evicts its oldest records and counts them."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from events.adapters.redis.connection import text
from events.adapters.redis.keys import Keys
from events.adapters.redis.scripts import lua_script
from events.deadletters import DEFAULT_LIMITS, DeadLetterLimits, dead_letter_record

log = logging.getLogger(__name__)

STORE_SCRIPT = """
-- KEYS: records hash, ages sorted set, evicted counts; ARGV: id, record, died at, cap, service
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do redis.call('HDEL', KEYS[1], oldest[i]) end
  redis.call('HINCRBY', KEYS[3], ARGV[5], over)
  return over
end
return 0
"""
"""Store a record and evict beyond the cap in one step (a Lua script runs atomically)."""


class RedisDeadLetters:
    def __init__(self, client: redis.Redis, limits: DeadLetterLimits = DEFAULT_LIMITS) -> None:
        self.redis, self.limits = client, limits
        self._store = lua_script(client, STORE_SCRIPT)

    def add(self, service: str, reason: str, detail: str, message: Any, attempts: int) -> dict[str, Any]:
        record = dead_letter_record(service, reason, detail, message, attempts, self.limits)
        self.store(record)
        log.warning("dead-lettered %s in %s: %s %s", record["id"], service, reason, detail[:200])
        return record

    def store(self, record: dict[str, Any]) -> None:
        name = record["service"]
        evicted = self._store(
            keys=[Keys.dead_letters(name), Keys.dead_letters_age(name), Keys.dead_letters_evicted()],
            args=[record["id"], json.dumps(record), time.time(), self.limits.per_service, name],
        )
        if evicted:
            log.warning("dead letters of %s over the cap of %d: evicted the %d oldest", name,
                        self.limits.per_service, evicted)

    def services(self) -> list[str]:
        return sorted(key.decode().rsplit(":", 1)[1] for key in self.redis.scan_iter(match=Keys.dead_letters("*")))

    def list(self, service: str | None = None) -> list[dict[str, Any]]:
        records = []
        for name in [service] if service else self.services():
            records += [json.loads(raw) for raw in self.redis.hvals(Keys.dead_letters(name))]
        return sorted(records, key=lambda record: record["dead_at"])

    def counts(self) -> dict[str, int]:
        return {name: int(self.redis.hlen(Keys.dead_letters(name))) for name in self.services()}

    def evicted(self) -> dict[str, int]:
        return {text(key): int(value) for key, value in self.redis.hgetall(Keys.dead_letters_evicted()).items()}

    def get(self, record_id: str) -> dict[str, Any] | None:
        for name in self.services():
            raw = self.redis.hget(Keys.dead_letters(name), record_id)
            if raw is not None:
                return dict(json.loads(raw))
        return None

    def remove(self, record: dict[str, Any]) -> bool:
        name = record["service"]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(Keys.dead_letters(name), record["id"])
            pipe.zrem(Keys.dead_letters_age(name), record["id"])
            removed, _ = pipe.execute()
        return bool(removed)

    def purge(self, service: str | None = None) -> int:
        """Delete them for good; returns how many were deleted."""
        names = [service] if service else self.services()
        if not names:
            return 0
        with self.redis.pipeline(transaction=True) as pipe:
            for name in names:
                pipe.hlen(Keys.dead_letters(name))
            pipe.delete(*(key for name in names for key in (Keys.dead_letters(name), Keys.dead_letters_age(name))))
            *counts, _ = pipe.execute()
        return sum(int(count) for count in counts)
