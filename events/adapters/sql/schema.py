"""The tables of a service's database (and of the monolith's). Changed only through a migration (migrations/)."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

documents = Table(
    "documents", metadata,
    Column("service", String(100), primary_key=True),
    Column("collection", String(100), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("body", Text, nullable=False),
)

inbox = Table(
    "inbox", metadata,
    Column("consumer", String(120), primary_key=True),
    Column("event_id", String(64), primary_key=True),
    Column("handled_at", Float, nullable=False),
    Index("inbox_handled_at", "handled_at"),
)
"""One row per event a consumer handled: the unique key is what refuses a second effect."""

outbox = Table(
    "outbox", metadata,
    Column("id", String(200), primary_key=True),
    Column("message", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("due_at", Float, nullable=False),
    Index("outbox_due_at", "due_at"),
)
"""Events committed with the state, until the broker took them (then the row is deleted)."""

dead_letters = Table(
    "dead_letters", metadata,
    Column("id", String(32), primary_key=True),
    Column("service", String(100), nullable=False, index=True),
    Column("dead_at", String(40), nullable=False),
    Column("record", Text, nullable=False),
)

dead_letter_evictions = Table(
    "dead_letter_evictions", metadata,
    Column("service", String(100), primary_key=True),
    Column("evicted", Integer, nullable=False),
)
"""service -> dead letters evicted to keep the table within its cap."""

deliveries = Table(
    "deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("consumer", String(100), nullable=False),
    Column("envelope", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("started", Integer, nullable=False, default=0),
    Column("due_at", Float, nullable=False),
    Index("deliveries_due_at", "due_at"),
)
"""The monolith's in-process queue: one row per (event, subscribing service) not yet handled. `attempts` counts
transient failures (retried), `started` the deliveries that never finished (a poison message kills the process)."""
