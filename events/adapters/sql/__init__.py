"""A service's own SQL database (SQLite or PostgreSQL, through SQLAlchemy Core): documents, inbox, outbox and dead
letters in one database per service; the classic transactional outbox with a relay, since no database can share a
transaction with the broker. Schema migrations with Alembic (migrations/). The monolith keeps all of it, plus its
in-process queue, in ONE database (inprocess.py)."""
