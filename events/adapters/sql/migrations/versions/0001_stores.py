"""A service's store: documents, inbox, outbox, dead letters; and the monolith's in-process queue.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("service", sa.String(100), primary_key=True),
        sa.Column("collection", sa.String(100), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(120), primary_key=True),
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("handled_at", sa.Float, nullable=False),
    )
    op.create_index("inbox_handled_at", "inbox", ["handled_at"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("due_at", sa.Float, nullable=False),
    )
    op.create_index("outbox_due_at", "outbox", ["due_at"])
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("dead_at", sa.String(40), nullable=False),
        sa.Column("record", sa.Text, nullable=False),
    )
    op.create_index("ix_dead_letters_service", "dead_letters", ["service"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("consumer", sa.String(100), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started", sa.Integer, nullable=False, server_default="0"),
        sa.Column("due_at", sa.Float, nullable=False),
    )
    op.create_index("deliveries_due_at", "deliveries", ["due_at"])


def downgrade() -> None:
    for table in ("deliveries", "dead_letters", "outbox", "inbox", "documents"):
        op.drop_table(table)
