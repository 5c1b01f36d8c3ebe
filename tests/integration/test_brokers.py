"""The bus contract, once per broker: Redis (messages queued by the commit script) and RabbitMQ (outbox + confirmed
publish through a topic exchange). The same observable guarantees must hold on both; the RabbitMQ variants are
skipped, with the reason, where no RabbitMQ answers."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from decimal import Decimal
from uuid import uuid4

import pytest
import redis

from events.bus import ServiceSpec
from events.catalog import StockLevel, StockReserved
from events.deadletters import UNROUTABLE, DeadLetterStore
from events.envelope import Envelope
from events.keys import Keys
from events.redis_bus import RedisPublisher, make_publisher, scan_documents
from events.settings import BusSettings
from payment_service.gateway import RedisLedger
from shop.services import SERVICES
from tests.brokers import Broker
from tests.helpers import wait_until

DEADLINE = 40.0
StartWorker = Callable[..., subprocess.Popen]

AUDIT = ServiceSpec(name="audit", handlers={StockReserved: lambda event, uow: None})
"""A second subscriber of StockReserved: a copy that went back through the exchange would show up in its queue."""


def stock_reserved(payment_method: str = "card", total: str = "25.00") -> Envelope:
    event = StockReserved(
        order_id=uuid4(), customer_id="alice", total=Decimal(total), payment_method=payment_method,
        lines=(StockLevel(product_id="book", quantity=1, stock=9, revision=2),),
    )
    return Envelope.wrap(event, producer="tests", correlation_id=event.order_id)


def payments(client: redis.Redis) -> dict[str, dict]:
    return scan_documents(client, "payment_service", "payment")


def charges(client: redis.Redis) -> list[str]:
    return [raw.decode() for raw in client.lrange(RedisLedger.CHARGES, 0, -1)]


def outcomes(client: redis.Redis, service: str) -> dict[str, int]:
    """What the service's workers reported per message (flushed to Redis about every second)."""
    fields = client.hgetall(Keys.metrics(service))
    return {k.decode()[len("outcome:"):]: int(v) for k, v in fields.items() if k.startswith(b"outcome:")}


@pytest.fixture
def publisher(bus: Broker) -> Iterator[RedisPublisher]:
    publisher = make_publisher(BusSettings())
    yield publisher
    publisher.close()


def payment_outcomes(bus: Broker) -> list:
    """What the payment service sent the order service (whose queue also gets StockReserved, for its catalogue)."""
    return [e for e in bus.envelopes("order_service") if e.type in ("PaymentProcessed", "PaymentFailed")]


# -- topology and routing ---------------------------------------------------------------------------------------------
def test_an_event_published_before_any_worker_ever_ran_waits_in_its_queue(bus: Broker, publisher: RedisPublisher):
    bus.declare(list(SERVICES.values()))
    envelope = stock_reserved()

    publisher.publish(envelope)

    assert [e.event_id for e in bus.envelopes("payment_service")] == [envelope.event_id]
    [(task, _)] = bus.tasks("payment_service")
    assert task == publisher.messages.task_name(bus.queue_name("payment_service"))
    # Only its subscribers got it: payment (charges on it) and order (its catalogue projection follows stock).
    assert [e.event_id for e in bus.envelopes("order_service")] == [envelope.event_id]
    assert all(bus.waiting(spec.queue) == 0 for spec in SERVICES.values()
               if spec.name not in ("payment_service", "order_service"))
    assert DeadLetterStore(bus.client).list() == []
    assert bus.client.hlen(Keys.outbox("amqp")) == 0, "sent and confirmed, so settled"


def test_an_event_with_two_subscribers_gets_one_copy_in_each_queue(bus: Broker, publisher: RedisPublisher):
    bus.declare([*SERVICES.values(), AUDIT])
    envelope = stock_reserved()

    publisher.publish(envelope)

    for queue in ("payment_service", "audit"):
        assert [e.event_id for e in bus.envelopes(queue)] == [envelope.event_id]


def test_an_event_nobody_is_bound_to_is_dead_lettered_as_unroutable_and_replayed_once_someone_is(
    bus: Broker, publisher: RedisPublisher
):
    bus.declare([SERVICES["notification_service"]])
    envelope = stock_reserved()

    publisher.publish(envelope)

    store = DeadLetterStore(bus.client)
    [record] = store.list()
    assert record["service"] == UNROUTABLE and "StockReserved" in record["reason"]
    assert bus.waiting("notification_service") == 0

    bus.declare(list(SERVICES.values()))
    store.replay(record, make_publisher(BusSettings()))

    assert [e.event_id for e in bus.envelopes("payment_service")] == [envelope.event_id]
    assert store.list() == []


# -- workers ----------------------------------------------------------------------------------------------------------
def test_a_worker_consumes_the_event_and_commits_its_effect_and_its_event(
    bus: Broker, publisher: RedisPublisher, start_worker: StartWorker
):
    bus.declare(list(SERVICES.values()))
    envelope = stock_reserved()
    publisher.publish(envelope)

    start_worker("payment_service")

    [payment] = wait_until(lambda: list(payments(bus.client).values()), DEADLINE, message="the payment document")
    assert payment["status"] == "CHARGED" and payment["order_id"] == envelope.payload["order_id"]
    [processed] = wait_until(lambda: payment_outcomes(bus), DEADLINE, message="PaymentProcessed")
    assert processed.type == "PaymentProcessed" and processed.causation_id == envelope.event_id
    assert charges(bus.client) == [envelope.payload["order_id"]]
    wait_until(lambda: outcomes(bus.client, "payment_service") == {"handled": 1}, DEADLINE)
    assert bus.waiting("payment_service") == 0


def test_the_same_event_delivered_twice_has_one_effect(
    bus: Broker, publisher: RedisPublisher, start_worker: StartWorker
):
    bus.declare(list(SERVICES.values()))
    envelope = stock_reserved()
    publisher.publish(envelope)
    publisher.publish(envelope)
    assert bus.waiting("payment_service") == 2

    start_worker("payment_service")

    wait_until(lambda: outcomes(bus.client, "payment_service") == {"handled": 1, "duplicate": 1}, DEADLINE,
               message="one delivery handled, the other refused by the inbox")
    assert len(payments(bus.client)) == 1
    assert charges(bus.client) == [envelope.payload["order_id"]]
    assert [e.type for e in payment_outcomes(bus)] == ["PaymentProcessed"]


def test_a_celery_retry_goes_back_to_its_own_queue_only_and_charges_once(
    bus: Broker, publisher: RedisPublisher, start_worker: StartWorker
):
    bus.declare([*SERVICES.values(), AUDIT])
    envelope = stock_reserved("card_flaky")
    publisher.publish(envelope)

    start_worker("payment_service", SHOP_GATEWAY_FLAKY_FAILURES="2")

    wait_until(lambda: outcomes(bus.client, "payment_service").get("handled") == 1, DEADLINE,
               message="the flaky charge to succeed")
    assert outcomes(bus.client, "payment_service") == {"retried": 2, "handled": 1}
    assert charges(bus.client) == [envelope.payload["order_id"]]
    assert bus.waiting("audit") == 1, "no retry went through the exchange"
    assert [e.type for e in payment_outcomes(bus)] == ["PaymentProcessed"]


def test_the_message_of_a_worker_killed_mid_task_comes_back_to_its_queue_and_is_handled_once(
    bus: Broker, publisher: RedisPublisher, start_worker: StartWorker
):
    bus.declare([*SERVICES.values(), AUDIT])
    envelope = stock_reserved("card_slow")
    publisher.publish(envelope)
    doomed = start_worker("payment_service", SHOP_FAULT_INJECTION="1", SHOP_GATEWAY_SLOW_SECONDS="120")
    order_id = envelope.payload["order_id"]
    wait_until(lambda: bus.client.hget(RedisLedger.ATTEMPTS, order_id), DEADLINE, message="the slow charge to start")

    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    start_worker("payment_service")  # the same node name: on Redis it takes back what its predecessor held

    [payment] = wait_until(lambda: list(payments(bus.client).values()), DEADLINE, message="the payment")
    assert payment["status"] == "CHARGED"
    assert charges(bus.client) == [envelope.payload["order_id"]]
    assert [e.type for e in payment_outcomes(bus)] == ["PaymentProcessed"]
    assert bus.waiting("audit") == 1, "the redelivery did not go through the exchange"


# -- crashes between the commit and the broker ------------------------------------------------------------------------
def test_a_message_lost_after_the_commit_is_sent_again_by_the_relay(
    bus: Broker, monkeypatch: pytest.MonkeyPatch
):
    """On RabbitMQ the gap is between the commit (Redis) and the confirmed publish: the process dies there, the event
    is only in the outbox. On Redis the commit queues the message itself, but kombu takes it off the list and records
    it as unacknowledged in two steps: a crash between them loses it. Either way the relay sends it again."""
    from events.consumer import ServiceRuntime

    monkeypatch.setenv("SHOP_REDELIVER_AFTER", "0.5")
    settings = BusSettings()
    bus.declare(list(SERVICES.values()))
    publisher = make_publisher(settings)
    envelope = stock_reserved()
    if bus.is_amqp:
        monkeypatch.setattr(publisher, "_after_commit", lambda deliveries: None)  # died right after the commit
    publisher.publish(envelope)
    if not bus.is_amqp:
        bus.client.rpop("payment_service")  # taken by a worker that died before recording it
    assert bus.waiting("payment_service") == 0

    relay = ServiceRuntime(SERVICES["payment_service"], settings).relay()
    wait_until(lambda: relay.sweep() > 0, DEADLINE, interval=0.2, message="the relay to send it")

    assert [e.event_id for e in bus.envelopes("payment_service")] == [envelope.event_id]
    if bus.is_amqp:
        assert bus.client.hlen(Keys.outbox("amqp")) == 0
    publisher.close()


# -- RabbitMQ's own dead-lettering --------------------------------------------------------------------------------------
def test_a_message_rabbitmq_dead_letters_reaches_the_dead_letter_store_and_can_be_replayed(
    bus: Broker, publisher: RedisPublisher
):
    if not bus.is_amqp:
        pytest.skip("Redis has no dead-letter exchange: the runtime dead-letters into the store itself")
    from kombu import Connection

    from events.consumer import ServiceRuntime

    bus.declare(list(SERVICES.values()))
    envelope = stock_reserved()
    publisher.publish(envelope)
    with Connection(bus.settings.broker_url) as connection:
        channel = connection.default_channel
        message = channel.basic_get(bus.queue_name("payment_service"), no_ack=False)
        channel.basic_reject(message.delivery_tag, requeue=False)

    relay = ServiceRuntime(SERVICES["payment_service"], bus.settings).relay()
    relay.sweep()
    [record] = wait_until(lambda: relay.sweep() >= 0 and DeadLetterStore(bus.client).list("payment_service"),
                          DEADLINE, message="the dead letter in the store")

    assert record["reason"] == "rejected by the broker" and "rejected in" in record["detail"]
    DeadLetterStore(bus.client).replay(record, publisher)
    assert [e.event_id for e in bus.envelopes("payment_service")] == [envelope.event_id]
