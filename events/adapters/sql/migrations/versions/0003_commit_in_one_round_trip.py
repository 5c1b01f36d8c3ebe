"""PostgreSQL: a function that fails a transaction whose optimistic version check found no row.

A unit of work's transaction on PostgreSQL is sent whole, COMMIT included, in one round trip (store.py,
`Statements.refusing`), so each check that must refuse the commit has to fail inside the server: the inbox row and a
new document by their primary keys, a changed document through this function, which raises `serialization_failure`
(SQLSTATE 40001, the code PostgreSQL itself gives a transaction that lost a concurrent update) when its UPDATE
changed no row. SQLite runs its statements one at a time and checks their results before COMMIT: nothing to add.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FUNCTION = "shop_changed_one"


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"""
CREATE OR REPLACE FUNCTION {FUNCTION}(changed bigint, document text) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
  IF changed <> 1 THEN
    RAISE EXCEPTION 'concurrent update of %', document USING ERRCODE = 'serialization_failure';
  END IF;
  RETURN changed;
END
$$""")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}(bigint, text)")
