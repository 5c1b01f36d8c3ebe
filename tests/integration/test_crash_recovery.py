"""At-least-once delivery with exactly-once effects, proven by killing real worker processes with SIGKILL."""

from __future__ import annotations

import os
import signal

import pytest
import redis

from events.consumer import in_flight
from events.deadletters import DeadLetterStore
from events.envelope import Envelope, seal
from events.keys import Keys
from events.redis_bus import RedisPublisher, declare_topology, scan_documents
from events.settings import BusSettings
from payment_service.gateway import RedisLedger
from shop.services import SERVICES
from tests.helpers import stock_reserved, wait_until

pytestmark = pytest.mark.usefixtures("redis_url")


def place(publisher: RedisPublisher, payment_method: str = "card", price: str = "10.00") -> str:
    """An order whose stock is reserved: the StockReserved the payment service charges on, put straight into the
    payment queue only (so the order service's queue holds nothing but what the payment service sends)."""
    event = stock_reserved(payment_method, price)
    envelope = Envelope.wrap(event, producer="product_service", correlation_id=event.order_id)
    publisher.enqueue_sealed("payment_service", seal(envelope, publisher.settings.key), str(envelope.event_id))
    return str(event.order_id)


@pytest.fixture
def publisher(monkeypatch: pytest.MonkeyPatch) -> RedisPublisher:
    monkeypatch.setenv("SHOP_FAULT_INJECTION", "1")
    monkeypatch.setenv("SHOP_GATEWAY_SLOW_SECONDS", "3")
    settings = BusSettings()
    declare_topology(settings, list(SERVICES.values()))
    return RedisPublisher(settings)


def kill_hard(process) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def payments(client: redis.Redis) -> dict:
    return scan_documents(client, "payment_service", "payment")


def test_worker_killed_while_handling_gets_the_message_back_and_charges_once(publisher, redis_client, start_worker):
    order_id = place(publisher, "card_slow")
    worker = start_worker("payment_service")
    wait_until(lambda: in_flight(redis_client, "payment_service") == 1,
               message="the slow charge to be in flight")
    kill_hard(worker)
    assert payments(redis_client) == {}

    start_worker("payment_service")
    wait_until(lambda: order_id in payments(redis_client), timeout=40, message="the payment after restart")
    wait_until(lambda: in_flight(redis_client, "payment_service") == 0, timeout=20)
    assert redis_client.lrange(RedisLedger.CHARGES, 0, -1) == [order_id.encode()]
    assert redis_client.llen("order_service") == 1, "exactly one PaymentProcessed for the order service"


@pytest.mark.parametrize("crash_point", ["before_commit", "after_commit"])
def test_crash_between_state_and_publish_still_publishes_exactly_once(
    crash_point, publisher, redis_client, start_worker, monkeypatch
):
    order_id = place(publisher)
    crashing = start_worker("payment_service", SHOP_CRASH_AT=f"{crash_point}:StockReserved")
    wait_until(lambda: crashing.poll() is not None, message="the worker to die at the failpoint")
    committed = order_id in payments(redis_client)
    assert committed == (crash_point == "after_commit")
    assert redis_client.llen("order_service") == int(committed), "the event is published with the state, or not at all"
    assert in_flight(redis_client, "payment_service") == int(not committed), "the commit acknowledges the message too"

    start_worker("payment_service")
    wait_until(
        lambda: in_flight(redis_client, "payment_service") == 0
        and redis_client.llen("payment_service") == 0
        and order_id in payments(redis_client),
        timeout=40, message="the redelivered message to be settled",
    )
    assert redis_client.llen("order_service") == 1
    assert redis_client.lrange(RedisLedger.CHARGES, 0, -1) == [order_id.encode()]


def test_poison_message_that_kills_the_worker_every_time_is_dead_lettered(
    publisher, redis_client, start_worker, monkeypatch
):
    monkeypatch.setenv("SHOP_MAX_DELIVERIES", "2")
    poison = place(publisher, "card_crash")
    good = place(publisher, "card")
    deaths = 0
    worker = start_worker("payment_service")

    def settled() -> bool:
        nonlocal worker, deaths
        if worker.poll() is not None:
            deaths += 1
            worker = start_worker("payment_service")
        return good in payments(redis_client) and bool(DeadLetterStore(redis_client).list("payment_service"))

    wait_until(settled, timeout=90, interval=0.2, message="the poison message to be dead-lettered")
    [record] = DeadLetterStore(redis_client).list("payment_service")
    assert record["reason"] == "poison message"
    assert poison in record["message"]["envelope"]
    assert 2 <= deaths <= 3
    assert poison not in payments(redis_client)


def test_duplicate_delivery_of_the_same_event_has_one_effect(publisher, redis_client, start_worker):
    order_id = place(publisher)
    [message] = redis_client.lrange("payment_service", 0, -1)
    redis_client.lpush("payment_service", message)  # the same event id, delivered twice
    start_worker("payment_service")
    wait_until(lambda: redis_client.llen("payment_service") == 0
               and in_flight(redis_client, "payment_service") == 0, timeout=30)
    assert list(payments(redis_client)) == [order_id]
    assert redis_client.llen("order_service") == 1
    assert redis_client.llen(RedisLedger.CHARGES) == 1


def test_worker_killed_between_taking_a_message_and_recording_it_handles_it_after_restart(
    publisher, redis_client, start_worker
):
    """kombu's own take (BRPOP, then the unacked record) loses a message to a kill in between. Here the take is an
    atomic move into the node's taken list: the message must be found there, with no outbox copy to fall back on."""
    order_id = place(publisher)
    redis_client.delete(Keys.outbox("payment_service"), Keys.outbox_schedule("payment_service"))
    crashing = start_worker("payment_service", SHOP_CRASH_AT="after_take:payment_service")
    wait_until(lambda: crashing.poll() is not None, message="the worker to die right after the take")
    assert redis_client.llen("payment_service") == 0, "the message left the queue"
    [taken] = [key for key in redis_client.scan_iter(match=Keys.taken("payment_service", "*"))]
    assert redis_client.llen(taken) == 1, "and sits in the node's taken list, not in memory only"
    assert in_flight(redis_client, "payment_service") == 1

    start_worker("payment_service")
    wait_until(lambda: order_id in payments(redis_client) and in_flight(redis_client, "payment_service") == 0,
               timeout=30, message="the taken message to be put back and handled")
    assert redis_client.llen(taken) == 0
    assert redis_client.lrange(RedisLedger.CHARGES, 0, -1) == [order_id.encode()]
    assert redis_client.llen("order_service") == 1
