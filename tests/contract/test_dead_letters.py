"""The dead-letter store's contract, held against every store that keeps them: what it keeps of a message, how far
it grows, and what `shop dlq purge` is told. A flood of huge or hostile messages must not fill the store that also
holds the service's state."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.adapters.redis.deadletters import RedisDeadLetters
from events.adapters.sql.deadletters import SqlDeadLetters
from events.deadletters import DeadLetterLimits, DeadLetters, replay
from events.envelope import Sealed
from events.settings import BusSettings
from shop.bootstrap import bootstrap
from tests.support.databases import emptied, postgres_database, postgres_missing

LIMITS = DeadLetterLimits(body_bytes=1024, per_service=5)


@pytest.fixture(params=["redis", "sqlite", "postgres"])
def dead_letters(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeadLetters]:
    if request.param == "redis":
        request.getfixturevalue("redis_url")
        wiring = bootstrap(BusSettings())
        yield RedisDeadLetters(wiring.redis, LIMITS)
        wiring.close()
        return
    if request.param == "postgres" and (missing := postgres_missing()):
        pytest.skip(missing)
    url = f"sqlite:///{tmp_path}/dead.sqlite3" if request.param == "sqlite" else postgres_database("deadletters")
    sql = emptied(url)
    yield SqlDeadLetters(sql, LIMITS)
    sql.dispose()


def test_a_small_message_is_kept_whole_and_can_be_replayed(dead_letters: DeadLetters) -> None:
    sealed = Sealed(envelope='{"type": "X"}', signature="s")
    record = dead_letters.add("svc", "bad signature", "", sealed, 1)
    assert dead_letters.get(record["id"])["message"] == sealed.model_dump()  # type: ignore[index]


def test_a_huge_message_keeps_its_head_size_and_hash_and_is_not_replayable(dead_letters: DeadLetters) -> None:
    body = "x" * 100_000
    record = dead_letters.add("svc", "message too large", "", body, 1)

    kept = dead_letters.get(record["id"])["message"]  # type: ignore[index]
    encoded = body.encode()
    assert kept == {"truncated": True, "size": len(encoded), "sha256": hashlib.sha256(encoded).hexdigest(),
                    "head": body[:LIMITS.body_bytes]}
    assert len(json.dumps(dead_letters.get(record["id"]))) < 2 * LIMITS.body_bytes
    with pytest.raises(ValueError, match="holds no replayable envelope"):
        replay(dead_letters.get(record["id"]), dead_letters, broker=None,  # type: ignore[arg-type]
               fresh_count=lambda service, event_id: None)


def test_beyond_the_cap_the_oldest_are_evicted_and_counted(dead_letters: DeadLetters) -> None:
    ids = [dead_letters.add("svc", f"reason {n}", "", f"message {n}", 1)["id"] for n in range(8)]
    dead_letters.add("other", "reason", "", "message", 1)

    assert [record["id"] for record in dead_letters.list("svc")] == ids[-LIMITS.per_service:]
    assert dead_letters.counts() == {"svc": LIMITS.per_service, "other": 1}
    assert dead_letters.evicted() == {"svc": 3}
    dead_letters.add("svc", "one more", "", "message", 1)
    assert dead_letters.evicted() == {"svc": 4}


def test_purge_reports_what_it_deleted(dead_letters: DeadLetters) -> None:
    for n in range(3):
        dead_letters.add("svc", "reason", "", f"message {n}", 1)
    dead_letters.add("other", "reason", "", "message", 1)

    assert dead_letters.purge("svc") == 3
    assert dead_letters.purge() == 1
    assert dead_letters.purge() == 0 and dead_letters.list() == []


def test_a_second_copy_of_one_event_dead_lettered_in_one_service_is_one_record(dead_letters: DeadLetters) -> None:
    # Delivery is at least once: a poison event published twice dies twice; the operator sees it once.
    envelope = json.dumps({"event_id": "2b1f0f7e-1111-4222-8333-944455556666", "type": "StockReserved"})
    first = dead_letters.add("svc", "poison message", "", Sealed(envelope=envelope, signature="s"), 2)
    again = dead_letters.add("svc", "poison message", "", Sealed(envelope=envelope, signature="s"), 2)
    elsewhere = dead_letters.add("other", "poison message", "", Sealed(envelope=envelope, signature="s"), 2)

    assert first["id"] == again["id"] != elsewhere["id"]
    assert dead_letters.counts() == {"svc": 1, "other": 1}
    assert dead_letters.evicted() == {}
