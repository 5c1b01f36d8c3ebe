"""At-least-once delivery with exactly-once effects, proven by killing real worker processes with SIGKILL."""

from __future__ import annotations

import os
import signal

import pytest
import redis

from events.adapters.redis.keys import Keys
from events.adapters.redis.worker import in_flight
from events.envelope import Envelope, seal
from events.messaging import OutgoingMessage
from payment_service.gateway import RedisLedger
from shop.bootstrap import Wiring, declare_topology
from tests.support.builders import session_keys, stock_reserved
from tests.support.waiting import wait_until


@pytest.fixture(autouse=True)
def faults(monkeypatch: pytest.MonkeyPatch, wiring: Wiring) -> None:
    """Every worker of these tests may be told to crash (SHOP_CRASH_AT) or to charge slowly (card_slow)."""
    monkeypatch.setenv("SHOP_FAULT_INJECTION", "1")
    monkeypatch.setenv("SHOP_GATEWAY_SLOW_SECONDS", "3")
    declare_topology(wiring.settings)


def place(wiring: Wiring, payment_method: str = "card", price: str = "10.00") -> str:
    """An order whose stock is reserved: the StockReserved the payment service charges on, put straight into the
    payment queue only (so the order service's queue holds nothing but what the payment service sends)."""
    event = stock_reserved(payment_method, price)
    envelope = Envelope.wrap(event, producer="product_service", correlation_id=event.order_id)
    sealed = seal(envelope, session_keys())
    wiring.broker.send([OutgoingMessage.to_queue("payment_service", sealed, str(envelope.event_id))])
    return str(event.order_id)


def kill_hard(process) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def payments(wiring: Wiring) -> dict:
    return wiring.store("payment_service").documents("payment_service", "payment")


def poison_letters(wiring: Wiring) -> list[dict]:
    return wiring.dead_letters.list("payment_service")


def test_worker_killed_while_handling_gets_the_message_back_and_charges_once(
    wiring: Wiring, redis_client: redis.Redis, start_worker
):
    order_id = place(wiring, "card_slow")
    worker = start_worker("payment_service")
    wait_until(lambda: in_flight(redis_client, "payment_service") == 1,
               message="the slow charge to be in flight")
    kill_hard(worker)
    assert payments(wiring) == {}

    start_worker("payment_service")
    wait_until(lambda: order_id in payments(wiring), timeout=40, message="the payment after restart")
    wait_until(lambda: in_flight(redis_client, "payment_service") == 0, timeout=20)
    assert redis_client.lrange(RedisLedger.CHARGES, 0, -1) == [order_id.encode()]
    assert redis_client.llen("order_service") == 1, "exactly one PaymentProcessed for the order service"


@pytest.mark.parametrize("crash_point", ["before_commit", "after_commit"])
def test_crash_between_state_and_publish_still_publishes_exactly_once(
    crash_point, wiring: Wiring, redis_client: redis.Redis, start_worker
):
    order_id = place(wiring)
    crashing = start_worker("payment_service", SHOP_CRASH_AT=f"{crash_point}:StockReserved")
    wait_until(lambda: crashing.poll() is not None, message="the worker to die at the failpoint")
    committed = order_id in payments(wiring)
    assert committed == (crash_point == "after_commit")
    assert redis_client.llen("order_service") == int(committed), "the event is published with the state, or not at all"
    assert in_flight(redis_client, "payment_service") == int(not committed), "the commit acknowledges the message too"

    start_worker("payment_service")
    wait_until(
        lambda: in_flight(redis_client, "payment_service") == 0
        and redis_client.llen("payment_service") == 0
        and order_id in payments(wiring),
        timeout=40, message="the redelivered message to be settled",
    )
    assert redis_client.llen("order_service") == 1
    assert redis_client.lrange(RedisLedger.CHARGES, 0, -1) == [order_id.encode()]


def test_poison_message_that_kills_the_worker_every_time_is_dead_lettered(
    wiring: Wiring, start_worker, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SHOP_MAX_DELIVERIES", "2")
    poison = place(wiring, "card_crash")
    good = place(wiring, "card")
    deaths = 0
    worker = start_worker("payment_service")

    def settled() -> bool:
        nonlocal worker, deaths
        if worker.poll() is not None:
            deaths += 1
            worker = start_worker("payment_service")
        return good in payments(wiring) and bool(poison_letters(wiring))

    wait_until(settled, timeout=90, interval=0.2, message="the poison message to be dead-lettered")
    [record] = poison_letters(wiring)
    assert record["reason"] == "poison message"
    assert poison in record["message"]["envelope"]
    assert 2 <= deaths <= 3
    assert poison not in payments(wiring)


def test_duplicate_delivery_of_the_same_event_has_one_effect(wiring: Wiring, redis_client: redis.Redis, start_worker):
    order_id = place(wiring)
    [message] = redis_client.lrange("payment_service", 0, -1)
    redis_client.lpush("payment_service", message)  # the same event id, delivered twice
    start_worker("payment_service")
    wait_until(lambda: redis_client.llen("payment_service") == 0
               and in_flight(redis_client, "payment_service") == 0, timeout=30)
    assert list(payments(wiring)) == [order_id]
    assert redis_client.llen("order_service") == 1
    assert redis_client.llen(RedisLedger.CHARGES) == 1


def test_worker_killed_between_taking_a_message_and_recording_it_handles_it_after_restart(
    wiring: Wiring, redis_client: redis.Redis, start_worker
):
    """kombu's own take (BRPOP, then the unacked record) loses a message to a kill in between. Here the take is an
    atomic move into the node's taken list: the message must be found there, with no outbox copy to fall back on."""
    order_id = place(wiring)
    redis_client.delete(Keys.outbox("payment_service"), Keys.outbox_schedule("payment_service"))
    crashing = start_worker("payment_service", SHOP_CRASH_AT="after_take:payment_service")
    wait_until(lambda: crashing.poll() is not None, message="the worker to die right after the take")
    assert redis_client.llen("payment_service") == 0, "the message left the queue"
    [taken] = [key for key in redis_client.scan_iter(match=Keys.taken("payment_service", "*"))]
    assert redis_client.llen(taken) == 1, "and sits in the node's taken list, not in memory only"
    assert in_flight(redis_client, "payment_service") == 1

    start_worker("payment_service")
    wait_until(lambda: order_id in payments(wiring) and in_flight(redis_client, "payment_service") == 0,
               timeout=30, message="the taken message to be put back and handled")
    assert redis_client.llen(taken) == 0
    assert redis_client.lrange(RedisLedger.CHARGES, 0, -1) == [order_id.encode()]
    assert redis_client.llen("order_service") == 1
