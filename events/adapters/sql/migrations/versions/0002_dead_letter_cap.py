"""Dead letters capped per service: what was evicted is counted.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letter_evictions",
        sa.Column("service", sa.String(100), primary_key=True),
        sa.Column("evicted", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dead_letter_evictions")
