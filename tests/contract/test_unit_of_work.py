"""The unit-of-work contract, held against every store: what a handler may rely on whichever store its service
uses. One test function per promise, run once per store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel

from events.adapters.ed25519.keyring import KeyRing, generate
from events.adapters.redis.broker import RedisBroker
from events.adapters.redis.store import RedisStore
from events.adapters.sql.store import SqlStore
from events.catalog import Money, OrderCreated, OrderLine, PaymentFailed
from events.collection import Collection
from events.envelope import Envelope
from events.memory import InMemoryStore
from events.messaging import OutgoingMessage
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, Store
from shop.bootstrap import bootstrap
from tests.support.databases import emptied, postgres_database, postgres_missing

STORES = ["memory", "redis", "redis-outbox", "sqlite", "postgres"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    """Keys of the made-up services these tests commit as."""
    directory = tmp_path_factory.mktemp("contract-keys")
    generate(directory, ["svc", "other"])
    return KeyRing.load(directory)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path, keys: KeyRing) -> Iterator[Store]:
    """memory: the in-process store; redis: beside the Redis broker (the commit pushes the messages); redis-outbox:
    for a broker elsewhere (the commit writes outbox entries, handed over after the commit); sqlite and postgres: a
    service's own database (outbox rows, handed over after the commit)."""
    if request.param == "memory":
        yield InMemoryStore()
        return
    if request.param in ("sqlite", "postgres"):
        if request.param == "postgres" and (missing := postgres_missing()):
            pytest.skip(missing)
        url = f"sqlite:///{tmp_path}/store.sqlite3" if request.param == "sqlite" else postgres_database("contract")
        sql = emptied(url)
        yield SqlStore(sql, BusSettings(), keys, on_commit=lambda messages, acknowledge: False)
        sql.dispose()
        return
    request.getfixturevalue("redis_url")
    wiring = bootstrap(BusSettings())
    if request.param == "redis":
        assert isinstance(wiring.broker, RedisBroker)
        yield RedisStore(wiring.redis, wiring.settings, keys, broker=wiring.broker)
    else:
        handed_over: list[OutgoingMessage] = []
        yield RedisStore(wiring.redis, wiring.settings, keys, on_commit=handed_over.extend)
    wiring.close()


def order_created() -> Envelope:
    event = OrderCreated(order_id=uuid4(), customer_id="a", items=(OrderLine(product_id="p", quantity=1,
                         unit_price="1.00"),), total="1.00", payment_method="card")  # type: ignore[arg-type]
    return Envelope.wrap(event, producer="tests", correlation_id=event.order_id)


def test_documents_inbox_mark_and_events_commit_together(store: Store) -> None:
    cause = order_created()
    uow = store.unit_of_work("svc", cause)
    assert uow.get("doc", "1") is None and not uow.already_handled()
    uow.put("doc", "1", {"total": "1.00"})
    published = uow.publish(PaymentFailed(order_id=uuid4(), amount="1.00", reason="x"))  # type: ignore[arg-type]

    uow.commit()

    assert uow.committed == [published] and uow.outbox == []
    assert published.correlation_id == cause.correlation_id and published.causation_id == cause.event_id
    after = store.unit_of_work("svc", cause)
    assert after.already_handled()
    assert after.get("doc", "1") == {"total": "1.00"}
    assert store.documents("svc", "doc") == {"1": {"total": "1.00"}}


def test_a_second_unit_of_work_for_the_same_cause_commits_nothing(store: Store) -> None:
    cause = order_created()
    first, second = store.unit_of_work("svc", cause), store.unit_of_work("svc", cause)
    first.put("doc", "1", {"by": "first"})
    second.put("doc", "2", {"by": "second"})
    second.publish(PaymentFailed(order_id=uuid4(), amount="1.00", reason="x"))  # type: ignore[arg-type]
    first.commit()

    with pytest.raises(AlreadyHandled):
        second.commit()
    assert store.documents("svc", "doc") == {"1": {"by": "first"}}
    assert second.committed == []


def test_a_document_changed_since_it_was_read_is_not_overwritten(store: Store) -> None:
    first, second = store.unit_of_work("svc"), store.unit_of_work("svc")
    assert first.get("doc", "1") is None and second.get("doc", "1") is None
    first.put("doc", "1", {"by": "first"})
    second.put("doc", "1", {"by": "second"})
    first.commit()

    with pytest.raises(ConcurrentUpdate):
        second.commit()
    assert store.documents("svc", "doc") == {"1": {"by": "first"}}


def test_an_existing_document_is_not_overwritten_unread(store: Store) -> None:
    first = store.unit_of_work("svc")
    first.put("doc", "1", {"v": 1})
    first.commit()
    blind = store.unit_of_work("svc")
    blind.put("doc", "1", {"v": 2})

    with pytest.raises(ConcurrentUpdate):
        blind.commit()


class Thing(BaseModel):
    id: UUID
    lines: tuple[OrderLine, ...]
    total: Money
    at: datetime
    note: str | None = None


def test_a_model_saved_through_a_collection_is_stored_as_its_json_and_reads_back_equal(store: Store) -> None:
    thing = Thing(id=uuid4(), lines=(OrderLine(product_id="p", quantity=2, unit_price=Decimal("1.25")),),
                  total=Decimal("2.50"), at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    uow = store.unit_of_work("svc")
    Collection(uow, "things", Thing, key=lambda t: str(t.id)).save(thing)
    uow.commit()

    reader = store.unit_of_work("svc")
    text = reader.get_json("things", str(thing.id))
    assert text is not None and (text.decode() if isinstance(text, bytes) else text) == thing.model_dump_json()
    assert Collection(reader, "things", Thing, key=lambda t: str(t.id)).get(thing.id) == thing
    assert reader.get("things", str(thing.id)) == thing.model_dump(mode="json")
    assert Collection(reader, "things", Thing, key=lambda t: str(t.id)).get(uuid4()) is None


def test_each_commit_moves_the_version_on(store: Store) -> None:
    for value in range(3):
        uow = store.unit_of_work("svc")
        uow.get("doc", "1")
        uow.put("doc", "1", {"v": value})
        uow.commit()
    assert store.documents("svc", "doc") == {"1": {"v": 2}}


def test_a_reader_gets_its_own_copy(store: Store) -> None:
    uow = store.unit_of_work("svc")
    uow.put("doc", "1", {"items": [1]})
    uow.commit()
    read = store.unit_of_work("svc").get("doc", "1")
    assert read is not None
    read["items"].append(2)
    assert store.unit_of_work("svc").get("doc", "1") == {"items": [1]}


def test_inboxes_are_per_service_and_a_replay_keeps_its_own(store: Store) -> None:
    cause = order_created()
    store.unit_of_work("svc", cause).commit()

    assert not store.unit_of_work("other", cause).already_handled()
    assert not store.unit_of_work("svc", cause, inbox="svc.replay").already_handled()
    replayed = store.unit_of_work("svc", cause, inbox="svc.replay")
    replayed.commit()
    assert store.unit_of_work("svc", cause, inbox="svc.replay").already_handled()


def test_forgetting_a_collection_clears_its_documents_and_that_inbox(store: Store) -> None:
    cause = order_created()
    uow = store.unit_of_work("svc", cause, inbox="svc.replay")
    uow.put("projection", "1", {"x": 1})
    uow.put("kept", "1", {"x": 1})
    uow.commit()

    store.forget("svc", "projection", inbox="svc.replay")

    assert store.documents("svc", "projection") == {}
    assert store.documents("svc", "kept") == {"1": {"x": 1}}
    assert not store.unit_of_work("svc", cause, inbox="svc.replay").already_handled()


def test_an_event_published_outside_a_handler_needs_a_correlation_id(store: Store) -> None:
    uow = store.unit_of_work("svc")
    with pytest.raises(ValueError, match="correlation_id"):
        uow.publish(PaymentFailed(order_id=uuid4(), amount="1.00", reason="x"))  # type: ignore[arg-type]
