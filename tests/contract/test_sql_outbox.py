"""A SQL store's outbox rows: deleted once the broker took them, without a transaction of their own per send (the next
write transaction takes them along, or an idle flush does), and never sent again by the relay once settled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from sqlalchemy import func, select

from events.adapters.ed25519.keyring import KeyRing, generate
from events.adapters.sql.engine import Engines
from events.adapters.sql.schema import outbox
from events.adapters.sql.store import SqlOutbox, SqlStore
from events.catalog import PaymentFailed
from events.messaging import OutgoingMessage
from events.settings import BusSettings
from events.unit_of_work import ConcurrentUpdate
from tests.support.databases import emptied, postgres_database, postgres_missing
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    directory = tmp_path_factory.mktemp("outbox-keys")
    generate(directory, ["svc"])
    return KeyRing.load(directory)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engines]:
    if request.param == "postgres" and (missing := postgres_missing()):
        pytest.skip(missing)
    url = f"sqlite:///{tmp_path}/store.sqlite3" if request.param == "sqlite" else postgres_database("outbox")
    found = emptied(url)
    yield found
    found.dispose()


class Handed:
    """on_commit: what the store handed over after each commit."""

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []

    def __call__(self, messages: list[OutgoingMessage], acknowledge: object | None) -> bool:
        self.messages.extend(messages)
        return False


def rows(database: Engines) -> int:
    """Outbox rows as they are in the database (no flush first, unlike `SqlOutbox.pending`)."""
    with database.read.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(outbox)).scalar_one())


def commit_one(store: SqlStore, key: str) -> None:
    uow = store.unit_of_work("svc")
    uow.get("doc", key)
    uow.put("doc", key, {"n": 1})
    uow.publish(PaymentFailed(order_id=uuid4(), amount="1.00", reason="x"),  # type: ignore[arg-type]
                correlation_id=uuid4())
    uow.commit()


def test_the_next_write_transaction_deletes_the_rows_the_broker_took(database: Engines, keys: KeyRing) -> None:
    rows_of = SqlOutbox(database, BusSettings(), linger=60)  # no idle flush within this test
    handed = Handed()
    store = SqlStore(database, BusSettings(), keys, on_commit=handed, settled=rows_of)
    commit_one(store, "a")
    assert rows(database) == 1 and len(handed.messages) == 1

    rows_of.settle([handed.messages[0].id])
    assert rows(database) == 1, "kept for the next transaction"
    commit_one(store, "b")

    assert rows(database) == 1, "the first row went with the second commit; the second's row stays until settled"
    assert rows_of.pending() == 1


def test_a_rolled_back_commit_gives_the_settled_ids_back(database: Engines, keys: KeyRing) -> None:
    rows_of = SqlOutbox(database, BusSettings(), linger=60)
    handed = Handed()
    store = SqlStore(database, BusSettings(), keys, on_commit=handed, settled=rows_of)
    commit_one(store, "a")
    rows_of.settle([handed.messages[0].id])
    stale = store.unit_of_work("svc")
    stale.get("doc", "a")
    commit_one_more = store.unit_of_work("svc")
    commit_one_more.get("doc", "a")
    commit_one_more.put("doc", "a", {"n": 2})
    commit_one_more.commit()  # takes the settled id along: the row is gone
    assert rows(database) == 0
    commit_one(store, "c")
    rows_of.settle([handed.messages[1].id])
    stale.put("doc", "a", {"n": 3})

    with pytest.raises(ConcurrentUpdate):
        stale.commit()

    assert rows(database) == 1, "the rollback kept the row"
    rows_of.flush()
    assert rows(database) == 0, "and the id was given back for the next delete"


def test_an_idle_outbox_deletes_settled_rows_by_itself(database: Engines, keys: KeyRing) -> None:
    rows_of = SqlOutbox(database, BusSettings(), linger=0.05)
    handed = Handed()
    store = SqlStore(database, BusSettings(), keys, on_commit=handed, settled=rows_of)
    commit_one(store, "a")

    rows_of.settle([handed.messages[0].id])

    wait_until(lambda: rows(database) == 0, timeout=5, message="the idle flush")


def test_the_relay_never_claims_a_settled_row(database: Engines, keys: KeyRing) -> None:
    settings = BusSettings(redeliver_after=0.0)  # every row is due at once
    rows_of = SqlOutbox(database, settings, linger=60)
    handed = Handed()
    store = SqlStore(database, settings, keys, on_commit=handed, settled=rows_of)
    commit_one(store, "a")
    commit_one(store, "b")

    rows_of.settle([handed.messages[0].id])

    assert [message.id for message in rows_of.claim(10)] == [handed.messages[1].id]
