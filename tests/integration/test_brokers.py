"""The bus contract, once per broker: Redis (messages queued by the commit script) and RabbitMQ (outbox + confirmed
publish through a topic exchange). The same observable guarantees must hold on both; the RabbitMQ variants are
skipped, with the reason, where no RabbitMQ answers."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest
import redis

from events.adapters.redis.keys import Keys
from events.bus import ServiceSpec
from events.catalog import StockReserved
from events.deadletters import UNROUTABLE, replay
from events.envelope import Envelope
from events.messaging import Periodic, SendResult
from events.settings import BusSettings
from payment_service.gateway import RedisLedger
from shop.bootstrap import Wiring, Worker, bootstrap, bootstrap_worker
from shop.services import CONSUMERS, SERVICES
from tests.support import builders
from tests.support.brokers import Broker
from tests.support.waiting import wait_until

DEADLINE = 40.0
StartWorker = Callable[..., subprocess.Popen]

AUDIT = ServiceSpec(name="audit", handlers={StockReserved: lambda event, uow: None})
"""A second subscriber of StockReserved: a copy that went back through the exchange would show up in its queue."""


def stock_reserved(payment_method: str = "card", total: str = "25.00") -> Envelope:
    return builders.wrap(builders.stock_reserved(payment_method, total))


def payments(wiring: Wiring) -> dict[str, dict]:
    return wiring.store("payment_service").documents("payment_service", "payment")


def charges(client: redis.Redis) -> list[str]:
    return [raw.decode() for raw in client.lrange(RedisLedger.CHARGES, 0, -1)]


def outcomes(client: redis.Redis, service: str) -> dict[str, int]:
    """What the service's workers reported per message (flushed to Redis about every second)."""
    fields = client.hgetall(Keys.metrics(service))
    return {k.decode()[len("outcome:"):]: int(v) for k, v in fields.items() if k.startswith(b"outcome:")}


@pytest.fixture
def wiring(bus: Broker) -> Iterator[Wiring]:
    """Overrides conftest's `wiring`: built after `bus` has chosen the broker, on that broker."""
    wiring = bootstrap(bus.settings)
    yield wiring
    wiring.close()


def worker_for(service: str, settings: BusSettings) -> Worker:
    """What `shop worker SERVICE` assembles (its celery app, its relay thread), not started; close `.wiring` after."""
    return bootstrap_worker(service, settings)


def relay_of(worker: Worker) -> Periodic:
    """The worker's relay thread (Redis: re-sends unsettled queue messages; RabbitMQ: sends the outbox and moves
    what RabbitMQ dead-lettered into the store), to run one pass at a time with `.step()`."""
    [relay] = [each for each in worker.background if isinstance(each, Periodic) and each.name.startswith("relay-")]
    return relay


def handled_task(worker: Worker) -> str:
    """The task the worker's celery app registers for its service (named by the broker adapter's hooks). Not "the one
    non-celery task in `app.tasks`": celery shares every `app.task` with each app finalized later in the process, so
    in a test process an app also lists the tasks of workers built before it."""
    name = worker.app.shop_hooks.task_name(worker.runtime.spec)
    assert name in worker.app.tasks
    return name


def payment_outcomes(bus: Broker) -> list:
    """What the payment service sent the order service (whose queue also gets StockReserved, for its catalogue)."""
    return [e for e in bus.envelopes("order_service") if e.type in ("PaymentProcessed", "PaymentFailed")]


# -- topology and routing ---------------------------------------------------------------------------------------------
def test_an_event_published_before_any_worker_ever_ran_waits_in_its_queue(bus: Broker, wiring: Wiring):
    bus.declare(list(SERVICES.values()))
    envelope = stock_reserved()

    wiring.publish(envelope)

    assert [e.event_id for e in bus.envelopes("payment_service")] == [envelope.event_id]
    [(task, _)] = bus.tasks("payment_service")
    worker = worker_for("payment_service", bus.settings)
    try:
        assert task == handled_task(worker), "the message names the task a payment worker runs"
    finally:
        worker.wiring.close()
    # Only its subscribers got it: payment (charges on it) and order (its catalogue projection follows stock).
    assert [e.event_id for e in bus.envelopes("order_service")] == [envelope.event_id]
    # (Every other consumer's queue is empty; the user service only publishes, so it has no queue at all.)
    others = [spec for spec in CONSUMERS.values() if spec.name not in ("payment_service", "order_service")]
    assert others and all(bus.waiting(spec.queue) == 0 for spec in others)
    assert wiring.dead_letters.list() == []
    # RabbitMQ: sent and confirmed, so settled; Redis: the commit queued it itself, there is no such outbox.
    assert wiring.outbox_pending() == (0 if bus.is_amqp else None)


def test_an_event_with_two_subscribers_gets_one_copy_in_each_queue(bus: Broker, wiring: Wiring):
    bus.declare([*SERVICES.values(), AUDIT])
    envelope = stock_reserved()

    wiring.publish(envelope)

    for queue in ("payment_service", "audit"):
        assert [e.event_id for e in bus.envelopes(queue)] == [envelope.event_id]


def test_an_event_nobody_is_bound_to_is_dead_lettered_as_unroutable_and_replayed_once_someone_is(
    bus: Broker, wiring: Wiring
):
    bus.declare([SERVICES["notification_service"]])
    envelope = stock_reserved()

    wiring.publish(envelope)

    [record] = wiring.dead_letters.list()
    assert record["service"] == UNROUTABLE and "StockReserved" in record["reason"]
    assert bus.waiting("notification_service") == 0

    bus.declare(list(SERVICES.values()))
    later = bootstrap(bus.settings)  # a process started after the declaration (Redis publishers cache routes)
    try:
        replay(record, later.dead_letters, later.broker, later.fresh_count)
    finally:
        later.close()

    assert [e.event_id for e in bus.envelopes("payment_service")] == [envelope.event_id]
    assert wiring.dead_letters.list() == []


# -- workers ----------------------------------------------------------------------------------------------------------
def test_a_worker_consumes_the_event_and_commits_its_effect_and_its_event(
    bus: Broker, wiring: Wiring, start_worker: StartWorker
):
    bus.declare(list(SERVICES.values()))
    envelope = stock_reserved()
    wiring.publish(envelope)

    start_worker("payment_service")

    [payment] = wait_until(lambda: list(payments(wiring).values()), DEADLINE, message="the payment document")
    assert payment["status"] == "CHARGED" and payment["order_id"] == envelope.payload["order_id"]
    [processed] = wait_until(lambda: payment_outcomes(bus), DEADLINE, message="PaymentProcessed")
    assert processed.type == "PaymentProcessed" and processed.causation_id == envelope.event_id
    assert charges(bus.client) == [envelope.payload["order_id"]]
    wait_until(lambda: outcomes(bus.client, "payment_service") == {"handled": 1}, DEADLINE)
    assert bus.waiting("payment_service") == 0


def test_the_same_event_delivered_twice_has_one_effect(
    bus: Broker, wiring: Wiring, start_worker: StartWorker
):
    bus.declare(list(SERVICES.values()))
    envelope = stock_reserved()
    wiring.publish(envelope)
    wiring.publish(envelope)
    assert bus.waiting("payment_service") == 2

    start_worker("payment_service")

    wait_until(lambda: outcomes(bus.client, "payment_service") == {"handled": 1, "duplicate": 1}, DEADLINE,
               message="one delivery handled, the other refused by the inbox")
    assert len(payments(wiring)) == 1
    assert charges(bus.client) == [envelope.payload["order_id"]]
    assert [e.type for e in payment_outcomes(bus)] == ["PaymentProcessed"]


def test_a_celery_retry_goes_back_to_its_own_queue_only_and_charges_once(
    bus: Broker, wiring: Wiring, start_worker: StartWorker
):
    bus.declare([*SERVICES.values(), AUDIT])
    envelope = stock_reserved("card_flaky")
    wiring.publish(envelope)

    start_worker("payment_service", SHOP_GATEWAY_FLAKY_FAILURES="2")

    wait_until(lambda: outcomes(bus.client, "payment_service").get("handled") == 1, DEADLINE,
               message="the flaky charge to succeed")
    assert outcomes(bus.client, "payment_service") == {"retried": 2, "handled": 1}
    assert charges(bus.client) == [envelope.payload["order_id"]]
    assert bus.waiting("audit") == 1, "no retry went through the exchange"
    assert [e.type for e in payment_outcomes(bus)] == ["PaymentProcessed"]


def test_the_message_of_a_worker_killed_mid_task_comes_back_to_its_queue_and_is_handled_once(
    bus: Broker, wiring: Wiring, start_worker: StartWorker
):
    bus.declare([*SERVICES.values(), AUDIT])
    envelope = stock_reserved("card_slow")
    wiring.publish(envelope)
    doomed = start_worker("payment_service", SHOP_FAULT_INJECTION="1", SHOP_GATEWAY_SLOW_SECONDS="120")
    order_id = envelope.payload["order_id"]
    wait_until(lambda: bus.client.hget(RedisLedger.ATTEMPTS, order_id), DEADLINE, message="the slow charge to start")

    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    start_worker("payment_service")  # the same node name: on Redis it takes back what its predecessor held

    [payment] = wait_until(lambda: list(payments(wiring).values()), DEADLINE, message="the payment")
    assert payment["status"] == "CHARGED"
    # on RabbitMQ the event is published after the store's commit: wait for it rather than race the publish
    wait_until(lambda: outcomes(bus.client, "payment_service").get("handled") == 1, DEADLINE,
               message="the redelivered charge to be handled")
    [processed] = wait_until(lambda: payment_outcomes(bus), DEADLINE, message="PaymentProcessed")
    assert processed.type == "PaymentProcessed"
    assert charges(bus.client) == [envelope.payload["order_id"]]
    assert bus.waiting("audit") == 1, "the redelivery did not go through the exchange"


# -- crashes between the commit and the broker ------------------------------------------------------------------------
def test_a_message_lost_after_the_commit_is_sent_again_by_the_relay(
    bus: Broker, monkeypatch: pytest.MonkeyPatch
):
    """On RabbitMQ the gap is between the commit (Redis) and the confirmed publish: the process dies there, the event
    is only in the outbox. On Redis the commit queues the message itself, but kombu takes it off the list and records
    it as unacknowledged in two steps: a crash between them loses it. Either way the relay sends it again."""
    monkeypatch.setenv("SHOP_REDELIVER_AFTER", "0.5")
    settings = BusSettings()
    bus.declare(list(SERVICES.values()))
    wiring = bootstrap(settings)
    worker = worker_for("payment_service", settings)
    try:
        envelope = stock_reserved()
        with monkeypatch.context() as patch:
            if bus.is_amqp:  # died right after the commit: the broker never got the event
                patch.setattr(wiring.broker, "send", lambda messages: SendResult())
            wiring.publish(envelope)
        if not bus.is_amqp:
            bus.client.rpop("payment_service")  # taken by a worker that died before recording it
        else:
            assert wiring.outbox_pending() == 1, "committed, so in the outbox"
        assert bus.waiting("payment_service") == 0

        relay = relay_of(worker)

        def relayed() -> bool:
            relay.step()
            return bus.waiting("payment_service") > 0

        wait_until(relayed, DEADLINE, interval=0.2, message="the relay to send it")

        assert [e.event_id for e in bus.envelopes("payment_service")] == [envelope.event_id]
        if bus.is_amqp:
            assert worker.wiring.outboxes["payment_service"].relayed == 1
            assert wiring.outbox_pending() == 0
        else:
            assert wiring.queues()["payment_service"]["relayed"] == 1
    finally:
        worker.wiring.close()
        wiring.close()


# -- RabbitMQ's own dead-lettering -------------------------------------------------------------------------------------
def test_a_message_rabbitmq_dead_letters_reaches_the_dead_letter_store_and_can_be_replayed(
    bus: Broker, wiring: Wiring
):
    if not bus.is_amqp:
        pytest.skip("Redis has no dead-letter exchange: the runtime dead-letters into the store itself")
    from kombu import Connection

    bus.declare(list(SERVICES.values()))
    envelope = stock_reserved()
    wiring.publish(envelope)
    with Connection(bus.settings.broker_url) as connection:
        channel = connection.default_channel
        message = channel.basic_get(bus.queue_name("payment_service"), no_ack=False)
        channel.basic_reject(message.delivery_tag, requeue=False)

    worker = worker_for("payment_service", bus.settings)
    try:
        relay = relay_of(worker)

        def moved() -> list[dict]:
            relay.step()
            return wiring.dead_letters.list("payment_service")

        [record] = wait_until(moved, DEADLINE, message="the dead letter in the store")
    finally:
        worker.wiring.close()

    assert record["reason"] == "rejected by the broker" and "rejected in" in record["detail"]
    replay(record, wiring.dead_letters, wiring.broker, wiring.fresh_count)
    assert [e.event_id for e in bus.envelopes("payment_service")] == [envelope.event_id]
    assert wiring.dead_letters.list("payment_service") == []
