"""The event log: every published event, appended by the atomic step to one capped Redis stream.

Read in order, in pages, for `shop replay`; filtered by correlation id inside Redis for `shop trace`, a slice of the
stream per script call, so a trace transfers only the order's own events and never blocks Redis for long.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from events import tracing
from events.adapters.redis.keys import Keys
from events.adapters.redis.scripts import lua_script
from events.messaging import OutgoingMessage

PAGE = 500

# KEYS: the event log. ARGV: start id (exclusive form allowed), correlation id, slice length.
# Returns {last id read or '', matching entries}.
FILTER_SCRIPT = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[3]))
local found = {}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'correlation_id' then
      if fields[i + 1] == ARGV[2] then found[#found + 1] = entry end
      break
    end
  end
end
local last = ''
if #entries > 0 then last = entries[#entries][1] end
return {last, found}
"""


class RedisEventLog:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._filter = lua_script(client, FILTER_SCRIPT)

    def history(self, page: int = PAGE) -> Iterator[tuple[str, str, str]]:
        """(type, envelope, signature) of every logged event, oldest first."""
        start = "-"
        while True:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = self.redis.xrange(  # type: ignore[assignment]
                Keys.event_log(), min=start, count=page)
            for _, fields in entries:
                yield fields[b"type"].decode(), fields[b"envelope"].decode(), fields[b"signature"].decode()
            if len(entries) < page:
                return
            start = "(" + entries[-1][0].decode()

    def of(self, correlation_id: str, slice_length: int = 5000) -> list[dict[str, Any]]:
        """The envelopes (as dicts) logged under `correlation_id`, oldest first."""
        return [envelope for envelope, _ in self.traced(correlation_id, slice_length)]

    def traced(self, correlation_id: str, slice_length: int = 5000) -> list[tuple[dict[str, Any], str | None]]:
        """(envelope as a dict, OpenTelemetry trace id or None) of each event logged under `correlation_id`."""
        start, entries = "-", []
        while True:
            last, found = self._filter(keys=[Keys.event_log()], args=[start, correlation_id, slice_length])
            for _, fields in found:
                values = dict(zip(fields[::2], fields[1::2], strict=True))
                entries.append((json.loads(values[b"envelope"]), values.get(b"trace", b"").decode() or None))
            if not last:
                return entries
            start = "(" + last.decode()

    def follow(self, after: str, count: int, block_ms: int) -> list[tuple[str, dict[str, Any], str | None]]:
        """(stream id, envelope as a dict, trace id or None) of at most `count` events logged after the stream id
        `after` ('$': only what comes next), waiting up to `block_ms` for the first one: a live view tails the log."""
        replies: list[Any] = self.redis.xread({Keys.event_log(): after}, count=count, block=block_ms) or []  # type: ignore[assignment]
        return [_entry(entry) for _, entries in replies for entry in entries]

    def latest(self, count: int) -> list[tuple[str, dict[str, Any], str | None]]:
        """The last `count` logged events, oldest first, as `follow` returns them."""
        entries = self.redis.xrevrange(Keys.event_log(), count=count)
        return [_entry(entry) for entry in reversed(entries)]  # type: ignore[arg-type]

    def append(self, messages: Sequence[OutgoingMessage], max_length: int = 200_000) -> None:
        """Log events published by a broker that keeps no history of its own (RabbitMQ)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for m in messages:
                pipe.xadd(Keys.event_log(), {"type": m.type, "correlation_id": m.correlation_id,
                                             "envelope": m.envelope, "signature": m.signature,
                                             "trace": tracing.trace_id(m.headers) or ""},
                          maxlen=max_length, approximate=True)
            pipe.execute()

    def length(self) -> int:
        return int(self.redis.xlen(Keys.event_log()))


def _entry(entry: tuple[bytes, dict[bytes, bytes]]) -> tuple[str, dict[str, Any], str | None]:
    stream_id, fields = entry
    return stream_id.decode(), json.loads(fields[b"envelope"]), fields.get(b"trace", b"").decode() or None
