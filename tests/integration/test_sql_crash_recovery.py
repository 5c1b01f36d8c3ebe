"""A service on its own SQL database (SQLite file, PostgreSQL database) keeps the guarantees of the store beside the
broker, by the classic outbox and relay: proven by killing real workers at each point of the hand-over."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis

from events.adapters.redis.worker import in_flight
from events.envelope import Envelope, seal
from events.messaging import OutgoingMessage
from payment_service.gateway import RedisLedger
from shop.bootstrap import Wiring, bootstrap, declare_topology
from tests.support.brokers import queued_envelopes
from tests.support.builders import session_keys, stock_reserved
from tests.support.databases import POSTGRES_URL, drop_postgres_databases, postgres_missing
from tests.support.waiting import wait_until

StartWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture(params=["sqlite", "postgres"])
def sql_wiring(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Wiring]:
    """Every service on its own database of the given kind; workers started by the test inherit the choice."""
    run = uuid4().hex[:8]
    if request.param == "postgres":
        if missing := postgres_missing():
            pytest.skip(missing)
        monkeypatch.setenv("SHOP_DATABASE_URL", POSTGRES_URL.rsplit("/", 1)[0] + f"/shop_crash_{run}_{{service}}")
    else:
        monkeypatch.setenv("SHOP_DATABASE_URL", f"sqlite:///{tmp_path}/db/{{service}}.sqlite3")
    monkeypatch.setenv("SHOP_FAULT_INJECTION", "1")
    wiring = bootstrap()
    declare_topology(wiring.settings)
    yield wiring
    wiring.close()
    if request.param == "postgres":
        drop_postgres_databases(f"shop_crash_{run}_")


def place(wiring: Wiring) -> str:
    """The StockReserved the payment service charges on, put straight into the payment queue only."""
    event = stock_reserved("card", "10.00")
    envelope = Envelope.wrap(event, producer="product_service", correlation_id=event.order_id)
    sealed = seal(envelope, session_keys())
    wiring.broker.send([OutgoingMessage.to_queue("payment_service", sealed, str(envelope.event_id))])
    return str(event.order_id)


def payments(wiring: Wiring) -> dict[str, dict[str, object]]:
    return wiring.store("payment_service").documents("payment_service", "payment")


def published_to_orders(wiring: Wiring, redis_client: redis.Redis) -> list[str]:
    """Event ids of what waits in the order service's queue."""
    return [str(envelope.event_id) for envelope in queued_envelopes(redis_client, "order_service", wiring.settings)]


@pytest.mark.parametrize("crash_point", ["before_commit", "after_commit"])
def test_a_crash_around_the_commit_leaves_one_effect_and_one_event(
    crash_point: str, sql_wiring: Wiring, redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    order_id = place(sql_wiring)
    crashing = start_worker("payment_service", SHOP_CRASH_AT=f"{crash_point}:StockReserved")
    wait_until(lambda: crashing.poll() is not None, message="the worker to die at the failpoint")
    assert (order_id in payments(sql_wiring)) == (crash_point == "after_commit")

    start_worker("payment_service")

    wait_until(lambda: order_id in payments(sql_wiring) and len(published_to_orders(sql_wiring, redis_client)) == 1,
               timeout=30, message="the payment and its one PaymentProcessed")
    assert redis_client.lrange(RedisLedger.CHARGES, 0, -1) == [order_id.encode()]
    wait_until(lambda: sql_wiring.outbox_pending() == 0, timeout=10, message="its outbox row deleted once sent")


def test_a_crash_between_the_commit_and_the_hand_over_is_repaired_by_the_relay(
    sql_wiring: Wiring, redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    order_id = place(sql_wiring)
    crashing = start_worker("payment_service", SHOP_CRASH_AT="before_publish:PaymentProcessed")
    wait_until(lambda: crashing.poll() is not None, message="the worker to die after its commit")
    assert order_id in payments(sql_wiring), "committed"
    assert published_to_orders(sql_wiring, redis_client) == [], "but not handed to the broker"
    assert sql_wiring.outbox_pending() == 1, "so its event waits in the outbox"

    start_worker("payment_service")  # the redelivered StockReserved is a duplicate; the relay sends the event

    wait_until(lambda: len(published_to_orders(sql_wiring, redis_client)) == 1, timeout=30,
               message="the relay to send the committed PaymentProcessed")
    wait_until(lambda: sql_wiring.outbox_pending() == 0, timeout=10, message="its outbox row settled")
    assert redis_client.lrange(RedisLedger.CHARGES, 0, -1) == [order_id.encode()]
    assert len(payments(sql_wiring)) == 1


def test_a_relay_killed_before_settling_sends_again_and_the_consumer_keeps_one_effect(
    sql_wiring: Wiring, redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    order_id = place(sql_wiring)
    first = start_worker("payment_service", SHOP_CRASH_AT="before_publish:PaymentProcessed")
    wait_until(lambda: first.poll() is not None, message="the worker to die after its commit")
    relaying = start_worker("payment_service", SHOP_CRASH_AT="after_send:outbox")
    wait_until(lambda: relaying.poll() is not None, timeout=30, message="the relay to die after sending")
    assert len(published_to_orders(sql_wiring, redis_client)) == 1 and sql_wiring.outbox_pending() == 1

    start_worker("payment_service")
    wait_until(lambda: len(published_to_orders(sql_wiring, redis_client)) == 2, timeout=30,
               message="the unsettled row sent a second time")
    first_copy, second_copy = queued_envelopes(redis_client, "order_service", sql_wiring.settings)
    assert first_copy.event_id == second_copy.event_id, "the same event twice: the consumer's inbox keeps one effect"

    start_worker("order_service")
    # A take moves several messages at once into the worker's taken list: both copies are consumed once neither
    # is queued nor taken.
    wait_until(lambda: not redis_client.llen("order_service") and not in_flight(redis_client, "order_service"),
               timeout=30, message="both copies consumed")
    assert sql_wiring.unit_of_work("order_service", first_copy).already_handled()
    assert sql_wiring.dead_letters.list("order_service") == []
    wait_until(lambda: sql_wiring.outbox_pending() == 0, timeout=10, message="the resent row deleted")
    assert redis_client.lrange(RedisLedger.CHARGES, 0, -1) == [order_id.encode()]
