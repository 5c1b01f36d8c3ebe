"""The Redis bus without workers: topology, routing, the atomic commit, redelivery, dead letters and their replay,
and the consuming channel a worker takes messages with."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any
from uuid import uuid4

import pytest
import redis
from kombu import Connection
from typer.testing import CliRunner

from events.adapters.redis.broker import RedisBroker
from events.adapters.redis.keys import Keys
from events.adapters.redis.store import RedisStore
from events.adapters.redis.topology import consumer_queue
from events.adapters.redis.worker import RedisWorkerHooks
from events.bus import ServiceSpec
from events.catalog import NotificationSent, PaymentProcessed, StockReserved
from events.deadletters import UNROUTABLE, replay
from events.envelope import Envelope, open_envelope, seal
from events.messaging import OutgoingMessage
from events.runtime.celery_worker import make_celery_app
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate, UnitOfWork
from shop.bootstrap import Wiring, bootstrap, declare_topology
from shop.services import SERVICES
from tests.support.brokers import queued, queued_envelopes
from tests.support.builders import place, session_keys, stock_reserved, stored_order, wrap

QUEUES = [spec.queue for spec in SERVICES.values()]

AUDIT = ServiceSpec(name="audit", handlers={StockReserved: lambda event, uow: None})
"""A second subscriber of StockReserved (the event the payment service charges on), so that a redelivery or retry that
went back through the exchange would show up as an extra copy in its queue."""


def unsettled(wiring: Wiring, service: str) -> int:
    """Messages pushed to `service`'s queue that its consumer has not settled yet (the queue's outbox copies)."""
    return int(wiring.queues()[service]["unsettled"])


# -- topology and routing ---------------------------------------------------------------------------------------------
def test_an_event_published_before_any_worker_ever_ran_waits_in_its_queue(
    wiring: Wiring, redis_client: redis.Redis
):
    settings = wiring.settings
    declare_topology(settings)
    envelope = wrap(stock_reserved())

    wiring.publish(envelope)

    [waiting] = queued(redis_client, "payment_service")
    assert waiting["task"] == "payment_service.handle_event"
    assert waiting["delivery_info"] == {"exchange": "", "routing_key": "payment_service"}
    assert [e.event_id for e in queued_envelopes(redis_client, "payment_service", settings)] == [envelope.event_id]
    # Its other subscriber (the order service's catalogue) got its own copy; nobody else got one.
    assert [e.event_id for e in queued_envelopes(redis_client, "order_service", settings)] == [envelope.event_id]
    assert redis_client.llen("notification_service") == 0
    assert wiring.dead_letters.list() == []


def test_each_service_queue_is_bound_to_exactly_the_events_it_handles(wiring: Wiring):
    declare_topology(wiring.settings)

    expected = {
        "OrderCreated": ["product_service"],
        "StockReserved": ["order_service", "payment_service"],
        "StockRejected": ["order_service"],
        "StockReleased": ["order_service"],
        "PaymentProcessed": ["order_service"],
        "PaymentFailed": ["order_service", "product_service"],
        "OrderConfirmed": ["notification_service"],
        "OrderCancelled": ["notification_service"],
        "NotificationSent": ["order_service"],
        "ProductCreated": ["order_service"],
        "ProductPriceChanged": ["order_service"],
        "UserRegistered": ["notification_service"],
    }
    assert {name: wiring.broker.subscribers(name) for name in expected} == expected


def test_declaring_the_topology_twice_changes_nothing(wiring: Wiring, redis_client: redis.Redis):
    declare_topology(wiring.settings)
    declare_topology(wiring.settings)

    wiring.publish(wrap(stock_reserved()))

    assert redis_client.llen("payment_service") == 1


def test_an_event_with_several_subscribers_gets_one_copy_per_queue_each_addressed_to_that_queue(
    wiring: Wiring, redis_client: redis.Redis
):
    declare_topology(wiring.settings, [*SERVICES.values(), AUDIT])
    envelope = wrap(stock_reserved())

    wiring.publish(envelope)

    for queue in ("payment_service", "audit"):
        [message] = queued(redis_client, queue)
        assert message["delivery_info"] == {"exchange": "", "routing_key": queue}
        assert message["task"] == f"{queue}.handle_event"
        assert queued_envelopes(redis_client, queue, wiring.settings)[0].event_id == envelope.event_id


@pytest.mark.parametrize("declared", [["payment_service"], []], ids=["other queues declared", "nothing declared"])
def test_an_event_nobody_is_bound_to_is_dead_lettered_as_unroutable_and_nowhere_else(
    wiring: Wiring, redis_client: redis.Redis, declared: list[str]
):
    settings = wiring.settings
    declare_topology(settings, [SERVICES[name] for name in declared])
    event = NotificationSent(notification_id=uuid4(), order_id=uuid4(), customer_id="alice", about="OrderConfirmed")
    envelope = wrap(event)

    wiring.publish(envelope)

    store = wiring.dead_letters
    [record] = store.list()
    assert record["service"] == UNROUTABLE
    assert "NotificationSent" in record["reason"]
    opened, _ = open_envelope(record["message"]["envelope"], record["message"]["signature"], keys=session_keys(),
                              max_bytes=settings.max_message_bytes)
    assert opened.event_id == envelope.event_id
    assert store.counts() == {UNROUTABLE: 1}
    assert all(redis_client.llen(queue) == 0 for queue in QUEUES)


def test_a_publish_of_several_events_is_one_step(wiring: Wiring, redis_client: redis.Redis):
    declare_topology(wiring.settings, [SERVICES["payment_service"]])
    routable, unroutable = wrap(stock_reserved()), wrap(
        NotificationSent(notification_id=uuid4(), order_id=uuid4(), customer_id="a", about="OrderConfirmed"))

    wiring.publish(routable, unroutable)

    assert [e.event_id for e in queued_envelopes(redis_client, "payment_service", wiring.settings)] == [
        routable.event_id]
    assert len(wiring.dead_letters.list(UNROUTABLE)) == 1


# -- the atomic commit ------------------------------------------------------------------------------------------------
def test_a_unit_of_work_commits_document_inbox_mark_and_outgoing_events_together(
    wiring: Wiring, redis_client: redis.Redis
):
    declare_topology(wiring.settings)

    order = place(wiring)

    assert stored_order(wiring, order.id) == order
    [envelope] = queued_envelopes(redis_client, "product_service", wiring.settings)
    assert envelope.type == "OrderCreated" and envelope.payload["order_id"] == str(order.id)
    assert envelope.correlation_id == order.id


def test_a_second_unit_of_work_for_the_same_cause_commits_nothing(wiring: Wiring, redis_client: redis.Redis):
    declare_topology(wiring.settings)
    cause = wrap(stock_reserved())
    first, second = (wiring.unit_of_work("payment_service", cause) for _ in range(2))
    for uow in (first, second):
        uow.put("payment", "x", {"by": id(uow)})
        uow.publish(NotificationSent(notification_id=uuid4(), order_id=uuid4(), customer_id="a", about="x"))
    first.commit()

    with pytest.raises(AlreadyHandled):
        second.commit()

    assert wiring.unit_of_work("payment_service", cause).already_handled()
    assert wiring.unit_of_work("payment_service").get("payment", "x") == {"by": id(first)}
    assert redis_client.llen("order_service") == 1  # only the first one's event


def test_a_unit_of_work_that_read_a_stale_document_commits_nothing(wiring: Wiring, redis_client: redis.Redis):
    declare_topology(wiring.settings)
    first, second = wiring.unit_of_work("order_service"), wiring.unit_of_work("order_service")
    assert first.get("order", "x") is None and second.get("order", "x") is None
    first.put("order", "x", {"by": "first"})
    second.put("order", "x", {"by": "second"})
    second.publish(stock_reserved(), correlation_id=uuid4())
    first.commit()

    with pytest.raises(ConcurrentUpdate):
        second.commit()

    assert wiring.unit_of_work("order_service").get("order", "x") == {"by": "first"}
    assert redis_client.llen("payment_service") == 0


# -- redelivery -------------------------------------------------------------------------------------------------------
def test_a_redelivered_message_comes_back_to_its_own_queue_only(
    wiring: Wiring, redis_client: redis.Redis, redis_url: str
):
    """A consumer without a taken list takes the message (kombu moves it to the service's unacked hash), dies without
    acknowledging, and after the visibility timeout another consumer's restore sweep puts it back. It must come back
    to payment_service only: the audit queue, also bound to StockReserved, keeps its single copy."""
    settings = wiring.settings
    declare_topology(settings, [*SERVICES.values(), AUDIT])
    envelope = wrap(stock_reserved())
    wiring.publish(envelope)
    transport_options = {**Keys.unacked("payment_service", "doomed@test"),
                         "visibility_timeout": settings.visibility_timeout}

    with Connection(redis_url, transport_options=transport_options) as doomed_worker:
        taken = doomed_worker.default_channel.basic_get("payment_service", no_ack=False)
        assert taken is not None
        unacked = transport_options["unacked_key"]
        assert redis_client.llen("payment_service") == 0 and redis_client.hlen(unacked) == 1
        # The worker died: nothing acks it. Let its visibility timeout expire (by ageing its index entry).
        [(tag, _)] = redis_client.zrange(transport_options["unacked_index_key"], 0, -1, withscores=True)
        redis_client.zadd(transport_options["unacked_index_key"], {tag: time.time() - 3600})

        with Connection(redis_url, transport_options=transport_options) as next_worker:
            next_worker.default_channel.qos.restore_visible(start=0, num=10)

        [message] = queued(redis_client, "payment_service")
        assert message["redelivered"] is True
        assert message["delivery_info"]["routing_key"] == "payment_service"
        assert queued_envelopes(redis_client, "payment_service", settings)[0].event_id == envelope.event_id
        assert redis_client.hlen(unacked) == 0
        assert redis_client.llen("audit") == 1
        assert redis_client.llen("order_service") == 1  # its own copy from the publish, and no other
        assert redis_client.llen("notification_service") == 0


# -- dead letters -----------------------------------------------------------------------------------------------------
def test_an_unroutable_dead_letter_is_replayed_once_a_subscriber_exists(wiring: Wiring, redis_client: redis.Redis):
    settings = wiring.settings
    envelope = wrap(NotificationSent(notification_id=uuid4(), order_id=uuid4(), customer_id="a", about="x"))
    wiring.publish(envelope)
    store = wiring.dead_letters
    [record] = store.list(UNROUTABLE)

    with pytest.raises(ValueError, match="still no subscriber"):
        replay(record, store, wiring.broker, wiring.fresh_count)
    assert store.list(UNROUTABLE) == [record]

    declare_topology(settings)
    # A process started after the declaration (as `shop dlq replay` is): its router reads the new bindings at once.
    with closing(bootstrap(settings)) as later:
        assert replay(record, later.dead_letters, later.broker, later.fresh_count) == "order_service"

    assert [e.event_id for e in queued_envelopes(redis_client, "order_service", settings)] == [envelope.event_id]
    assert store.list() == []


def test_shop_dlq_replay_puts_a_service_dead_letter_back_into_that_service_queue(
    wiring: Wiring, redis_client: redis.Redis
):
    from shop.cli import app

    settings = wiring.settings
    declare_topology(settings)
    envelope = wrap(stock_reserved())
    sealed = seal(envelope, session_keys())
    store = wiring.dead_letters
    record = store.add("payment_service", "retries exhausted", "gateway down", sealed.model_dump(), attempts=5)
    redis_client.set(Keys.deliveries("payment_service", envelope.event_id), 5)

    result = CliRunner().invoke(app, ["dlq", "replay", record["id"]])

    assert result.exit_code == 0, result.output
    assert [e.event_id for e in queued_envelopes(redis_client, "payment_service", settings)] == [envelope.event_id]
    assert redis_client.llen("order_service") == 0  # its queue only, not every subscriber of StockReserved
    assert store.list() == []
    assert not redis_client.exists(Keys.deliveries("payment_service", envelope.event_id))  # a fresh count


def test_a_dead_letter_without_an_envelope_is_kept_not_replayed(wiring: Wiring, redis_client: redis.Redis):
    store = wiring.dead_letters
    record = store.add("payment_service", "not a task message", "", {"raw_body": "garbage"}, attempts=1)

    with pytest.raises(ValueError, match="no replayable envelope"):
        replay(record, store, wiring.broker, wiring.fresh_count)

    assert store.list() == [record]
    assert redis_client.llen("payment_service") == 0


# -- the consuming channel: atomic take, the taken list as the record of what is unacknowledged -----------------------
TAKING_NODE = "probe@test"
PAYMENT = SERVICES["payment_service"]


@pytest.fixture
def hooks(wiring: Wiring) -> RedisWorkerHooks:
    return RedisWorkerHooks(PAYMENT, wiring.settings, wiring.redis, TAKING_NODE)


@pytest.fixture
def take(wiring: Wiring, hooks: RedisWorkerHooks) -> Iterator[Any]:
    """Takes one message off payment_service the way a worker does (its consuming connection, configured by the
    worker's broker hooks: the taken-list transport); returns (connection, kombu message)."""
    app = make_celery_app("probe", wiring.settings, hooks)
    opened: list[Connection] = []

    def take_one() -> tuple[Connection, Any]:
        connection = app.connection_for_read()
        opened.append(connection)
        received: list[Any] = []
        consumer = connection.Consumer(
            [consumer_queue(PAYMENT)], accept=["json"],
            callbacks=[lambda body, message: received.append(message)],
        )
        consumer.qos(prefetch_count=1)
        consumer.consume()
        connection.drain_events(timeout=5)
        [message] = received
        return connection, message

    yield take_one
    for connection in opened:
        connection.release()


def test_a_taken_message_is_recorded_in_the_taken_list_only_until_acknowledged(
    wiring: Wiring, redis_client: redis.Redis, take
):
    declare_topology(wiring.settings)
    wiring.publish(wrap(stock_reserved()))
    assert unsettled(wiring, "payment_service") == 1
    connection, message = take()
    taken = Keys.taken("payment_service", TAKING_NODE)
    assert redis_client.llen("payment_service") == 0
    assert redis_client.llen(taken) == 1, "the take moved it into the node's taken list, in the same command"
    assert redis_client.hlen(Keys.unacked("payment_service", TAKING_NODE)["unacked_key"]) == 0, "no second record"
    assert unsettled(wiring, "payment_service") == 1, "taken is not settled"
    message.ack()
    assert redis_client.llen(taken) == 1, "the ack is sent ahead of the next take, in the same write"
    with contextlib.suppress(TimeoutError):
        connection.drain_events(timeout=0.3)  # the next take (nothing left to take)
    assert redis_client.llen(taken) == 0 and redis_client.llen("payment_service") == 0
    assert unsettled(wiring, "payment_service") == 0, "the ack settles the queue's outbox copy too"


@contextlib.contextmanager
def consuming(
    wiring: Wiring, hooks: RedisWorkerHooks, callback: Callable[[Any, Any], None], prefetch: int, backlog: int
) -> Iterator[tuple[Connection, list[Envelope]]]:
    """`backlog` events queued for the payment service, and a worker's consuming connection with that prefetch
    count calling `callback` for each message; yields the connection and the events, oldest first."""
    declare_topology(wiring.settings)
    published = [wrap(stock_reserved()) for _ in range(backlog)]
    for envelope in published:
        wiring.publish(envelope)
    connection = make_celery_app("probe", wiring.settings, hooks).connection_for_read()
    try:
        consumer = connection.Consumer([consumer_queue(PAYMENT)], accept=["json"], callbacks=[callback])
        consumer.qos(prefetch_count=prefetch)
        consumer.consume()
        yield connection, published
    finally:
        connection.release()


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_a_backlog_is_taken_up_to_the_prefetch_count_per_round_trip_in_order_each_in_the_taken_list(
    wiring: Wiring, redis_client: redis.Redis, pool: str
):
    """Whatever the pool, the acks of messages not acknowledged inside a commit ride on the next take (celery itself
    sends its acks on the next turn of its event loop)."""
    hooks = RedisWorkerHooks(PAYMENT, wiring.settings.model_copy(update={"worker_pool": pool}), wiring.redis,
                             TAKING_NODE)
    taken_key = Keys.taken("payment_service", TAKING_NODE)
    seen: list[tuple[str, int, int]] = []  # (event id, taken list length, queue length) as each is handed over

    def handle(body: Any, message: Any) -> None:
        event_id = message.headers["id"].split(":", 1)[0]  # the task id: "<event id>:<queue>"
        seen.append((event_id, redis_client.llen(taken_key), redis_client.llen("payment_service")))
        message.ack()

    with consuming(wiring, hooks, handle, prefetch=3, backlog=5) as (connection, published):
        connection.drain_events(timeout=5)
        assert [(taken, queued) for _, taken, queued in seen] == [(3, 2), (3, 2), (3, 2)], (
            "one take moved three messages into the taken list; they are handed over one after the other")
        deadline = time.monotonic() + 5
        while len(seen) < 5 and time.monotonic() < deadline:  # an event may be the acks' replies, ahead of the take's
            connection.drain_events(timeout=5)
        assert len(seen) == 5 and seen[3][1:] == (2, 0), "the three acks rode ahead of the next take"
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.3)
    assert [event_id for event_id, _, _ in seen] == [str(e.event_id) for e in published], "in the queue's order"
    assert redis_client.llen(taken_key) == 0 and unsettled(wiring, "payment_service") == 0


def test_when_a_delivery_of_a_batch_fails_the_rest_of_the_batch_goes_back_to_its_queue_in_order(
    wiring: Wiring, redis_client: redis.Redis, hooks: RedisWorkerHooks
):
    def fail(body: Any, message: Any) -> None:
        raise RuntimeError("the worker is stopping")

    with consuming(wiring, hooks, fail, prefetch=3, backlog=4) as (connection, published):
        with pytest.raises(RuntimeError):
            connection.drain_events(timeout=5)  # took 3; the first one's delivery fails
        waiting = queued(redis_client, "payment_service")
        assert [e.event_id for e in queued_envelopes(redis_client, "payment_service", wiring.settings)] == [
            e.event_id for e in published[1:]], "the two taken with it are next again, then the one never taken"
        assert [m["redelivered"] for m in waiting] == [True, True, False]
        assert [m["may_have_died"] for m in waiting] == [False, False, None], "never handed over: they killed nothing"
        assert redis_client.llen(Keys.taken("payment_service", TAKING_NODE)) == 1, "the one handed over, unacked"


def test_events_handed_over_after_a_commit_acknowledge_the_taken_message_in_the_same_step(
    wiring: Wiring, redis_client: redis.Redis, take, hooks: RedisWorkerHooks
):
    """A store of its own (SQL) commits first, then hands its events over: that one step also does what the ack
    would, so the channel's ack has nothing left to do."""
    declare_topology(wiring.settings)
    wiring.publish(wrap(stock_reserved()))
    _, message = take()
    request = type("Request", (), {"properties": message.properties})()
    acknowledgement = hooks.acknowledgement(request)
    assert acknowledgement is not None
    payment = wrap(PaymentProcessed(order_id=uuid4(), payment_id=uuid4(), amount="1.00"))  # type: ignore[arg-type]

    result = wiring.broker.send([OutgoingMessage.of(payment, session_keys())], acknowledgement)

    assert result.acknowledged
    assert redis_client.llen(Keys.taken("payment_service", TAKING_NODE)) == 0, "out of the taken list"
    assert unsettled(wiring, "payment_service") == 0, "its queue-outbox copy settled"
    assert payment.event_id in [e.event_id for e in queued_envelopes(redis_client, "order_service", wiring.settings)]
    hooks.acknowledged(request)
    message.ack()  # what celery does next: nothing left to remove
    assert redis_client.llen("payment_service") == 0


def test_a_dead_letter_or_duplicate_is_acknowledged_at_once_not_on_celerys_next_loop_turn(
    wiring: Wiring, redis_client: redis.Redis, take, hooks: RedisWorkerHooks
):
    """celery sends a task's ack on the next turn of its event loop, after the rest of the batch has run: a worker
    that dies in between (the next message of its batch is a poison) would get a dead-lettered message back, count it
    from zero again, and die with it again. The runtime settles such a message itself, in one round trip."""
    declare_topology(wiring.settings)
    wiring.publish(wrap(stock_reserved()))
    _, message = take()
    request = type("Request", (), {"properties": message.properties})()
    assert redis_client.llen(Keys.taken("payment_service", TAKING_NODE)) == 1 and unsettled(wiring, "payment_service")

    hooks.settle(request)

    assert redis_client.llen(Keys.taken("payment_service", TAKING_NODE)) == 0, "out of the taken list"
    assert unsettled(wiring, "payment_service") == 0, "its queue-outbox copy settled"
    message.ack()  # what celery does later: nothing left to remove
    assert redis_client.llen("payment_service") == 0
    assert redis_client.llen(Keys.taken("payment_service", TAKING_NODE)) == 0


def test_a_rejected_message_goes_back_to_its_queue_flagged_redelivered(
    wiring: Wiring, redis_client: redis.Redis, take
):
    declare_topology(wiring.settings)
    envelope = wrap(stock_reserved())
    wiring.publish(envelope)
    _, message = take()
    message.reject(requeue=True)
    [back] = queued(redis_client, "payment_service")
    assert back["redelivered"] is True, "the runtime checks a redelivery against the inbox"
    assert back["may_have_died"] is False, "the solo pool's task gave it back: no death to count"
    assert queued_envelopes(redis_client, "payment_service", wiring.settings)[0].event_id == envelope.event_id
    assert redis_client.llen(Keys.taken("payment_service", TAKING_NODE)) == 0


def test_what_a_closing_channel_held_goes_back_and_a_reconnecting_node_puts_back_the_rest(
    wiring: Wiring, redis_client: redis.Redis, take, hooks: RedisWorkerHooks
):
    declare_topology(wiring.settings)
    wiring.publish(wrap(stock_reserved()))
    connection, _ = take()
    connection.release()  # closes the channel without an ack: kombu restores what it held
    assert [m["redelivered"] for m in queued(redis_client, "payment_service")] == [True]

    taken = Keys.taken("payment_service", TAKING_NODE)
    redis_client.lmove("payment_service", taken)  # as a worker killed right after its take leaves it
    assert redis_client.llen(taken) == 1 and redis_client.llen("payment_service") == 0
    hooks.on_connected()  # what the node runs when it (re)connects
    assert redis_client.llen(taken) == 0
    assert [m["redelivered"] for m in queued(redis_client, "payment_service")] == [True]


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_what_a_dead_node_held_may_have_killed_it_what_a_living_one_gives_back_did_not(
    wiring: Wiring, redis_client: redis.Redis, pool: str
):
    """The node's next process puts back everything its predecessor held, each marked as one that may have killed
    it (the one it was running cannot be told from the rest of its batch: celery acknowledges a finished message
    on the next turn of its event loop); a solo process that merely reconnected marks none. A pool of child
    processes: a child may have died with any of them."""
    declare_topology(wiring.settings)
    published = [wrap(stock_reserved()) for _ in range(3)]
    for envelope in published:
        wiring.publish(envelope)
    taken = Keys.taken("payment_service", TAKING_NODE)
    for _ in published:  # as a worker killed in the middle of its batch leaves its taken list
        redis_client.lmove("payment_service", taken, "RIGHT", "LEFT")
    hooks = RedisWorkerHooks(PAYMENT, wiring.settings.model_copy(update={"worker_pool": pool}), wiring.redis,
                             TAKING_NODE)

    hooks.on_connected()  # the node's next process connects

    waiting = queued(redis_client, "payment_service")
    assert [e.event_id for e in queued_envelopes(redis_client, "payment_service", wiring.settings)] == [
        e.event_id for e in published], "back in their order"
    assert [m["redelivered"] for m in waiting] == [True, True, True]
    assert [m["may_have_died"] for m in waiting] == [True, True, True]

    for _ in published:  # the same process takes them again, then loses its connection
        redis_client.lmove("payment_service", taken, "RIGHT", "LEFT")
    hooks.on_connected()
    again = [m["may_have_died"] for m in queued(redis_client, "payment_service")]
    assert again == ([False, False, False] if pool == "solo" else [True] * 3)


# -- pipelined commits: a solo worker's commit, sent without waiting for its reply (events/adapters/redis/pipelined.py)
def _pipelined_delivery(wiring: Wiring, take, hooks: RedisWorkerHooks) -> tuple[RedisStore, Envelope, Any]:
    """A StockReserved taken by the payment service's node, and a store beside the broker that pipelines commits."""
    declare_topology(wiring.settings)
    wiring.publish(wrap(stock_reserved()))
    _, message = take()
    envelope, _ = open_envelope(message.payload[1]["envelope"], message.payload[1]["signature"], keys=session_keys(),
                                max_bytes=wiring.settings.max_message_bytes)
    assert isinstance(wiring.broker, RedisBroker)
    store = RedisStore(wiring.redis, wiring.settings, session_keys(), broker=wiring.broker)
    store.pipeline_commits()
    request = type("Request", (), {"properties": message.properties})()
    return store, envelope, hooks.acknowledgement(request)


def _outcome_of(uow: UnitOfWork) -> list[str]:
    """Where the outcome its commit's reply says will be, once read."""
    seen: list[str] = []
    assert uow.outcome_later is not None, "a pipelined commit"
    uow.outcome_later.append(seen.append)
    return seen


def test_a_pipelined_commit_acknowledges_its_message_and_the_next_read_sees_its_writes(
    wiring: Wiring, redis_client: redis.Redis, take, hooks: RedisWorkerHooks
):
    store, cause, acknowledgement = _pipelined_delivery(wiring, take, hooks)
    assert store.pipelined is not None and acknowledgement is not None
    uow = store.unit_of_work("payment_service", cause)
    uow.acknowledgement = acknowledgement
    uow.put("payment", "x", {"paid": True})
    payment = uow.publish(PaymentProcessed(order_id=uuid4(), payment_id=uuid4(), amount="1.00"))  # type: ignore[arg-type]

    uow.commit()
    seen = _outcome_of(uow)

    assert uow.acknowledged and store.pipelined.unanswered == 1, "sent, its reply not read yet"
    assert store.unit_of_work("payment_service").get("payment", "x") == {"paid": True}, "read after the commit"
    assert store.pipelined.unanswered == 0 and store.pipelined.late_refusals == 0 and seen == ["handled"]
    assert redis_client.llen(Keys.taken("payment_service", TAKING_NODE)) == 0, "acknowledged by the script"
    assert unsettled(wiring, "payment_service") == 0
    assert payment.event_id in [e.event_id for e in queued_envelopes(redis_client, "order_service", wiring.settings)]
    assert store.unit_of_work("payment_service", cause).already_handled()


def test_a_pipelined_commit_refused_late_puts_its_message_back_and_writes_nothing(
    wiring: Wiring, redis_client: redis.Redis, take, hooks: RedisWorkerHooks
):
    """A document changed between the read and the commit (another worker of the service): when the reply says so,
    the message goes back to its queue at once, marked as not having died with a worker, to be handled again."""
    store, cause, acknowledgement = _pipelined_delivery(wiring, take, hooks)
    assert store.pipelined is not None
    uow = store.unit_of_work("payment_service", cause)
    uow.acknowledgement = acknowledgement
    assert uow.get("payment", "x") is None
    other = store.unit_of_work("payment_service")
    other.put("payment", "x", {"by": "other"})
    other.commit()
    uow.put("payment", "x", {"by": "late"})
    uow.publish(PaymentProcessed(order_id=uuid4(), payment_id=uuid4(), amount="1.00"))  # type: ignore[arg-type]
    uow.commit()
    seen = _outcome_of(uow)

    store.pipelined.drain()

    assert store.pipelined.late_refusals == 1 and seen == ["requeued"]
    assert store.unit_of_work("payment_service").get("payment", "x") == {"by": "other"}
    assert not store.unit_of_work("payment_service", cause).already_handled()
    assert redis_client.llen(Keys.taken("payment_service", TAKING_NODE)) == 0
    [back] = queued(redis_client, "payment_service")
    assert back["redelivered"] and back["may_have_died"] is False
    assert [e.type for e in queued_envelopes(redis_client, "order_service", wiring.settings)] == ["StockReserved"], \
        "its PaymentProcessed not published"


def test_a_pipelined_commit_of_an_event_handled_meanwhile_acknowledges_its_message(
    wiring: Wiring, redis_client: redis.Redis, take, hooks: RedisWorkerHooks
):
    store, cause, acknowledgement = _pipelined_delivery(wiring, take, hooks)
    assert store.pipelined is not None
    first = store.unit_of_work("payment_service", cause)
    first.put("payment", "x", {"by": "first"})
    first.commit()
    late = store.unit_of_work("payment_service", cause)
    late.acknowledgement = acknowledgement
    late.put("payment", "y", {"by": "late"})
    late.commit()
    seen = _outcome_of(late)

    store.pipelined.drain()

    assert store.pipelined.late_refusals == 1 and seen == ["duplicate"]
    assert store.unit_of_work("payment_service").get("payment", "y") is None
    assert redis_client.llen(Keys.taken("payment_service", TAKING_NODE)) == 0, "acknowledged, not put back"
    assert redis_client.llen("payment_service") == 0 and unsettled(wiring, "payment_service") == 0


def test_a_pipelined_commit_whose_reply_is_lost_with_the_connection_goes_back_to_be_deduplicated(
    wiring: Wiring, redis_client: redis.Redis, take, hooks: RedisWorkerHooks, monkeypatch: pytest.MonkeyPatch
):
    """Committed or not, nobody can tell: the message goes back, and the inbox turns it into a duplicate if it had."""
    store, cause, acknowledgement = _pipelined_delivery(wiring, take, hooks)
    assert store.pipelined is not None
    uow = store.unit_of_work("payment_service", cause)
    uow.acknowledgement = acknowledgement
    uow.put("payment", "x", {"paid": True})
    uow.commit()

    def lost(*args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(store.pipelined._connection, "read_response", lost)  # the reply never arrives

    store.pipelined.drain()

    assert store.pipelined.late_refusals == 1
    assert redis_client.llen("payment_service") == 1, "back in its queue"
    monkeypatch.undo()
    assert store.unit_of_work("payment_service", cause).already_handled(), "it had committed: a duplicate now"


def test_the_consuming_channel_runs_the_workers_before_take_hook_before_it_waits_for_messages(
    wiring: Wiring, hooks: RedisWorkerHooks, request: pytest.FixtureRequest
):
    """Where a solo worker reads the replies of its pipelined commits: before each take, not after a long wait."""
    calls: list[float] = []
    hooks.before_take = lambda: calls.append(time.monotonic())
    take = request.getfixturevalue("take")  # its app is configured by the hooks as they are now
    declare_topology(wiring.settings)
    wiring.publish(wrap(stock_reserved()))

    take()

    assert len(calls) >= 1
