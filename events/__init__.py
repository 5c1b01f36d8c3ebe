"""The contracts and the messaging core, shared by every service and knowing none.

Core modules (catalog, envelope, bus, unit_of_work, messaging, deadletters, memory, settings) import pydantic and the
standard library only; `http` adds what every FastAPI edge shares; `runtime/` runs handlers inside celery workers;
`adapters/` holds one folder per technology (redis, amqp, ...). The import rules are checked by the test suite
(import-linter contracts in pyproject.toml).
"""
