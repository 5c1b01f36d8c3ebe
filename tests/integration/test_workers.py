"""Real `shop worker` processes on Redis: waiting events, retries, redelivery after a crash, garbage, duplicates and
dead-letter replay. Every wait is a condition with a deadline; the machine is small and shared, so deadlines are
generous."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable

import pytest
import redis
from kombu import Connection

from events.adapters.redis.keys import Keys
from events.adapters.redis.worker import in_flight
from events.bus import ServiceSpec
from events.catalog import StockReserved
from order_service.domain import OrderStatus
from payment_service.gateway import RedisLedger
from shop.bootstrap import Wiring, declare_topology
from shop.services import CONSUMERS, SERVICES
from tests.support.brokers import queued_envelopes
from tests.support.builders import place, stock_reserved, stored_order, wrap
from tests.support.waiting import wait_until

AUDIT = ServiceSpec(name="audit", handlers={StockReserved: lambda event, uow: None})
"""A second subscriber of StockReserved (the event the payment service charges on), so that a redelivery or retry
that went back through the exchange would show up as an extra copy in its queue."""
DEADLINE = 30.0
StartWorker = Callable[..., subprocess.Popen]


def payments(wiring: Wiring) -> dict[str, dict]:
    return wiring.store("payment_service").documents("payment_service", "payment")


def charges(client: redis.Redis) -> list[str]:
    return [raw.decode() for raw in client.lrange(RedisLedger.CHARGES, 0, -1)]


def drained(client: redis.Redis, service: str) -> bool:
    """Nothing waiting and nothing in flight: every message given to the worker was acknowledged."""
    return client.llen(service) == 0 and in_flight(client, service) == 0


def payment_outcomes(wiring: Wiring) -> list:
    """What the payment service sent the order service (whose queue also holds StockReserved, for its catalogue)."""
    return [e for e in queued_envelopes(wiring.redis, "order_service", wiring.settings)
            if e.type in ("PaymentProcessed", "PaymentFailed")]


def dead_letters(wiring: Wiring, service: str) -> list[dict]:
    return wiring.dead_letters.list(service)


def test_an_event_that_waited_for_its_worker_is_processed_when_it_starts(
    wiring: Wiring, redis_client: redis.Redis, start_worker: StartWorker
):
    declare_topology(wiring.settings)
    envelope = wrap(stock_reserved("card"))
    wiring.publish(envelope)
    assert redis_client.llen("payment_service") == 1

    start_worker("payment_service")

    [payment] = wait_until(lambda: list(payments(wiring).values()), DEADLINE, message="the payment document")
    assert payment["order_id"] == envelope.payload["order_id"] and payment["status"] == "CHARGED"
    [processed] = wait_until(lambda: payment_outcomes(wiring), DEADLINE)
    assert processed.type == "PaymentProcessed" and processed.causation_id == envelope.event_id
    assert processed.payload["order_id"] == envelope.payload["order_id"]
    assert charges(redis_client) == [envelope.payload["order_id"]]
    wait_until(lambda: drained(redis_client, "payment_service"), DEADLINE)


def test_a_whole_order_journey_across_three_workers(
    wiring: Wiring, redis_client: redis.Redis, start_worker: StartWorker
):
    declare_topology(wiring.settings)
    for service in CONSUMERS:
        start_worker(service)

    confirmed, declined = place(wiring, "card"), place(wiring, "card_declined")

    wait_until(lambda: (o := stored_order(wiring, confirmed.id)) and o.notified_at, DEADLINE, message="notified")
    wait_until(lambda: (o := stored_order(wiring, declined.id)) and o.notified_at, DEADLINE, message="notified")
    assert stored_order(wiring, confirmed.id).status is OrderStatus.CONFIRMED
    assert stored_order(wiring, declined.id).status is OrderStatus.CANCELLED
    assert stored_order(wiring, declined.id).reason == "card declined"
    assert charges(redis_client) == [str(confirmed.id)]
    assert wiring.dead_letters.list() == []


def test_a_celery_retry_stays_in_its_queue_and_charges_once(
    wiring: Wiring, redis_client: redis.Redis, start_worker: StartWorker
):
    declare_topology(wiring.settings, [*SERVICES.values(), AUDIT])
    order = place(wiring, "card_flaky")
    start_worker("product_service")
    wait_until(lambda: redis_client.llen("audit") == 1, DEADLINE, message="the stock reserved")

    start_worker("payment_service", SHOP_GATEWAY_FLAKY_FAILURES="2")
    start_worker("order_service")

    wait_until(lambda: stored_order(wiring, order.id).status is OrderStatus.CONFIRMED, DEADLINE,
               message="the flaky order confirmed")
    assert charges(redis_client) == [str(order.id)]
    assert int(redis_client.hget(RedisLedger.ATTEMPTS, str(order.id))) == 3
    assert wiring.queues()["payment_service"]["retries"] == 2
    assert redis_client.llen("audit") == 1  # the retries never went through the exchange
    assert dead_letters(wiring, "payment_service") == []


def test_a_message_of_a_worker_killed_mid_task_comes_back_to_its_own_queue_and_is_handled_once(
    wiring: Wiring, redis_client: redis.Redis, start_worker: StartWorker
):
    declare_topology(wiring.settings, [*SERVICES.values(), AUDIT])
    envelope = wrap(stock_reserved("card_slow"))
    order_id = envelope.payload["order_id"]
    wiring.publish(envelope)
    taken = Keys.taken("payment_service", f"payment_service@{socket.gethostname()}")

    doomed = start_worker("payment_service", SHOP_FAULT_INJECTION="1", SHOP_GATEWAY_SLOW_SECONDS="120")
    wait_until(lambda: in_flight(redis_client, "payment_service") == 1, DEADLINE,
               message="the worker to take the message")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    assert redis_client.llen(taken) == 1 and redis_client.llen("payment_service") == 0
    assert charges(redis_client) == []

    start_worker("payment_service")  # same node name: it puts back what its predecessor held, at once

    [payment] = wait_until(lambda: list(payments(wiring).values()), DEADLINE, message="the payment")
    assert payment["status"] == "CHARGED"
    wait_until(lambda: drained(redis_client, "payment_service"), DEADLINE)
    assert charges(redis_client) == [order_id]
    assert [e.type for e in payment_outcomes(wiring)] == ["PaymentProcessed"]
    assert redis_client.llen("audit") == 1  # no copy through the exchange
    assert redis_client.llen("notification_service") == 0
    assert dead_letters(wiring, "payment_service") == []


def push_kombu_message(redis_url: str, queue: str, body, headers: dict | None = None) -> None:
    with Connection(redis_url) as connection:
        connection.Producer().publish(body, exchange="", routing_key=queue, serializer="json", headers=headers or {})


GARBAGE = {
    "not json": lambda url, client: client.lpush("payment_service", "not json"),
    "a kombu message that is not a task": lambda url, client: push_kombu_message(url, "payment_service",
                                                                                   {"hello": "world"}),
    "a task nobody defined": lambda url, client: push_kombu_message(
        url, "payment_service", [[], {}, {}], headers={"task": "payment_service.drop_tables", "id": "x1"}),
    "a task message without an envelope": lambda url, client: push_kombu_message(
        url, "payment_service", [[], {"hello": "world"}, {}],
        headers={"task": "payment_service.handle_event", "id": "x2"}),
    "an envelope with a forged signature": lambda url, client: push_kombu_message(
        url, "payment_service", [[], {"envelope": wrap(stock_reserved()).model_dump_json(), "signature": "0" * 64}, {}],
        headers={"task": "payment_service.handle_event", "id": "x3"}),
}
EXPECTED_REASON = {
    "not json": "undecodable message",
    "a kombu message that is not a task": "not a task message",
    "a task nobody defined": "unknown task",
    "a task message without an envelope": "malformed message",
    "an envelope with a forged signature": "bad signature",
}


@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_garbage_in_a_queue_is_dead_lettered_and_the_worker_goes_on(
    garbage: str, wiring: Wiring, redis_client: redis.Redis, redis_url: str, start_worker: StartWorker,
):
    declare_topology(wiring.settings)
    GARBAGE[garbage](redis_url, redis_client)
    worker = start_worker("payment_service")

    [record] = wait_until(lambda: dead_letters(wiring, "payment_service"), DEADLINE, message="a dead letter")
    assert record["reason"] == EXPECTED_REASON[garbage]

    good = wrap(stock_reserved("card"))
    wiring.publish(good)
    wait_until(lambda: len(payments(wiring)) == 1, DEADLINE, message="the good event handled")
    assert worker.poll() is None
    assert charges(redis_client) == [good.payload["order_id"]]
    assert len(dead_letters(wiring, "payment_service")) == 1


def test_the_same_event_delivered_twice_has_one_effect(
    wiring: Wiring, redis_client: redis.Redis, start_worker: StartWorker
):
    declare_topology(wiring.settings)
    envelope = wrap(stock_reserved("card"))
    wiring.publish(envelope)
    wiring.publish(envelope)
    assert redis_client.llen("payment_service") == 2

    start_worker("payment_service")

    wait_until(lambda: drained(redis_client, "payment_service"), DEADLINE, message="both deliveries consumed")
    assert len(payments(wiring)) == 1
    assert charges(redis_client) == [envelope.payload["order_id"]]
    assert [e.type for e in payment_outcomes(wiring)] == ["PaymentProcessed"]
    assert dead_letters(wiring, "payment_service") == []


def test_a_dead_letter_replayed_after_the_outage_is_processed(
    wiring: Wiring, redis_client: redis.Redis, start_worker: StartWorker
):
    """The gateway stays down longer than the retries last (3 timeouts, 2 attempts allowed): the event is
    dead-lettered. Replayed later (a fresh message, fresh retries), it gets charged."""
    from typer.testing import CliRunner

    from shop.cli import app

    declare_topology(wiring.settings)
    order = place(wiring, "card_flaky")
    start_worker("product_service")
    start_worker("payment_service", SHOP_GATEWAY_FLAKY_FAILURES="3", SHOP_MAX_RETRIES="1")

    [record] = wait_until(lambda: dead_letters(wiring, "payment_service"), DEADLINE, message="a dead letter")
    assert record["reason"] == "retries exhausted"
    wait_until(lambda: drained(redis_client, "payment_service"), DEADLINE)
    assert payments(wiring) == {} and charges(redis_client) == []
    # The ack of the dead-lettered message settled its queue-outbox copy: the relay will not send it again.
    assert wiring.queues()["payment_service"]["unsettled"] == 0

    result = CliRunner().invoke(app, ["dlq", "replay", record["id"]])
    assert result.exit_code == 0, result.output

    [payment] = wait_until(lambda: list(payments(wiring).values()), DEADLINE, message="the replayed payment")
    assert payment["status"] == "CHARGED" and payment["order_id"] == str(order.id)
    assert charges(redis_client) == [str(order.id)]
    assert dead_letters(wiring, "payment_service") == []
    [processed] = payment_outcomes(wiring)
    assert processed.type == "PaymentProcessed"
