"""An order's journey across the services, read back from the event log (`shop trace <order id>`).

Every published event is in the log stream (`Keys.event_log()`), with its correlation id as a field: the order id
for everything an order causes. The filter runs inside Redis, a slice of the stream per script call, so a trace
transfers only the order's own events and never blocks Redis for long, even with the whole capped log to search.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from events.keys import Keys

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


@dataclass(frozen=True)
class Hop:
    """One event of the journey, and the event it reacts to (None for the first, or a cause no longer logged)."""

    event_id: str
    type: str
    producer: str
    occurred_at: datetime
    causation_id: str | None
    cause: Hop | None = None

    @property
    def latency_ms(self) -> float | None:
        """Cause -> effect: from the cause being published to this event being published (queueing + handling)."""
        if self.cause is None:
            return None
        return (self.occurred_at - self.cause.occurred_at).total_seconds() * 1000


def logged_events(client: redis.Redis, correlation_id: str, slice_length: int = 5000) -> list[dict[str, Any]]:
    """The envelopes (as dicts) logged under `correlation_id`, oldest first."""
    script = client.register_script(FILTER_SCRIPT)
    start, envelopes = "-", []
    while True:
        last, found = script(keys=[Keys.event_log()], args=[start, correlation_id, slice_length])
        for _, fields in found:
            values = dict(zip(fields[::2], fields[1::2]))
            envelopes.append(json.loads(values[b"envelope"]))
        if not last:
            return envelopes
        start = "(" + last.decode()


def journey(client: redis.Redis, correlation_id: str) -> list[Hop]:
    """The order's events in the order they happened, each linked to its cause (looked up by id, not by position:
    clocks of two hosts may disagree by a few milliseconds)."""
    envelopes = {envelope["event_id"]: envelope for envelope in logged_events(client, correlation_id)}
    hops: dict[str, Hop] = {}

    def hop(event_id: str) -> Hop:
        if event_id not in hops:
            envelope = envelopes[event_id]
            causation_id = envelope.get("causation_id")
            hops[event_id] = Hop(
                event_id=event_id,
                type=envelope["type"],
                producer=envelope["producer"],
                occurred_at=datetime.fromisoformat(envelope["occurred_at"]),
                causation_id=causation_id,
                cause=hop(causation_id) if causation_id in envelopes else None,
            )
        return hops[event_id]

    return sorted((hop(event_id) for event_id in envelopes), key=lambda each: each.occurred_at)
