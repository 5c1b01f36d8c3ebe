"""The worker runtime's decisions, with fakes for its ports: what happens to a message before, during and after its
handler runs, without a broker. (tests/integration/ checks the same decisions with real workers on real Redis.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest

from events.bus import ServiceSpec, TransientError
from events.catalog import PaymentFailed, StockReserved
from events.envelope import Envelope, seal
from events.memory import InMemoryStore
from events.runtime.consumer import Decision, Delivery, ServiceRuntime
from events.settings import BusSettings
from events.unit_of_work import ConcurrentUpdate, UnitOfWork
from shop.bootstrap import publishers
from tests.support.builders import producer_of, session_keys, stock_reserved
from tests.support.fakes import FakeCounter, FakeDeadLetters


class Unreachable(Exception):
    """Stands for 'the store cannot be reached' (redis.ConnectionError in a real worker)."""


class Harness:
    def __init__(self, handler: Callable[..., None], **settings: Any) -> None:
        self.settings = BusSettings(**{"max_retries": 2, "max_deliveries": 3, "retry_backoff": 0.5, **settings})
        self.store, self.dead, self.counter = InMemoryStore(), FakeDeadLetters(), FakeCounter()
        self.slept: list[float] = []
        self.failpoints: list[str] = []
        spec = ServiceSpec(name="payment_service", handlers={StockReserved: handler})
        self.runtime = ServiceRuntime(
            spec, {"StockReserved": handler}, self.store, self.dead, self.counter, self.settings,
            keys=session_keys(), publishers=publishers(), unavailable=(Unreachable,), sleep=self.slept.append,
            failpoint=lambda point, subject, _: self.failpoints.append(f"{point}:{subject}"),
        )

    def message(self, event: Any = None, **overrides: Any) -> tuple[Envelope, Delivery]:
        event = event or stock_reserved()
        envelope = Envelope.wrap(event, producer=producer_of(event), correlation_id=uuid4())
        sealed = seal(envelope, session_keys())
        return envelope, Delivery(overrides.pop("raw", sealed.envelope), overrides.pop("signature", sealed.signature),
                                  **overrides)

    def handle(self, delivery: Delivery) -> Decision:
        return self.runtime.handle(delivery)


def record_payment(event: StockReserved, uow: UnitOfWork) -> None:
    uow.put("payment", str(event.order_id), {"amount": str(event.total)})
    uow.publish(PaymentFailed(order_id=event.order_id, amount=event.total, reason="declined"))


def test_a_first_delivery_runs_the_handler_and_commits_its_effects() -> None:
    harness = Harness(record_payment)
    envelope, delivery = harness.message()

    decision = harness.handle(delivery)

    assert decision.outcome == "handled"
    assert harness.store.unit_of_work("payment_service", envelope).already_handled()
    assert len(harness.store.documents("payment_service", "payment")) == 1
    assert harness.counter.deliveries == {} and harness.dead.records == []  # a first delivery is not counted
    assert harness.failpoints == ["before_commit:StockReserved", "after_commit:StockReserved"]


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"signature": "0" * 64}, "bad signature"),
    ({"raw": "{not json"}, "invalid JSON"),
    ({"unexpected": {"args": [1]}}, "malformed message"),
    ({"signature": None}, "malformed message"),
])
def test_a_message_that_fails_verification_never_reaches_the_handler(overrides: dict[str, Any], reason: str) -> None:
    calls: list[object] = []
    harness = Harness(lambda event, uow: calls.append(event))
    _, delivery = harness.message(**overrides)

    assert harness.handle(delivery).outcome == "dead-lettered"
    assert calls == [] and harness.dead.reasons == [reason]


def test_an_event_the_service_does_not_handle_is_dead_lettered_as_such() -> None:
    harness = Harness(record_payment)
    _, delivery = harness.message(PaymentFailed(order_id=uuid4(), amount="1.00", reason="x"))  # type: ignore[arg-type]

    assert harness.handle(delivery).outcome == "dead-lettered"
    assert harness.dead.reasons == ["no handler"]


def test_a_redelivery_of_a_handled_event_is_a_duplicate_and_changes_nothing() -> None:
    harness = Harness(record_payment)
    _envelope, delivery = harness.message()
    harness.handle(delivery)
    before = dict(harness.store.records)

    decision = harness.handle(Delivery(delivery.envelope, delivery.signature, redelivered=True))

    assert decision.outcome == "duplicate"
    assert harness.store.records == before
    assert harness.counter.deliveries == {}


def test_a_message_redelivered_until_the_limit_is_dead_lettered_as_poison() -> None:
    harness = Harness(record_payment, max_deliveries=3)
    _, delivery = harness.message()
    again = Delivery(delivery.envelope, delivery.signature, redelivered=True)
    harness.counter.count("payment_service", "not this one")  # other events' counts are their own

    # The worker died with each of the first three deliveries. A redelivery whose worker may have died with the
    # delivery before it counts that death when it begins: the second and third counted one each, the fourth
    # counts the third: the limit.
    for _ in range(2):
        harness.counter.count("payment_service", again_event_id(again))
    decision = harness.handle(again)

    assert decision.outcome == "dead-lettered"
    assert harness.dead.reasons == ["poison message"] and harness.dead.records[0]["attempts"] == 3
    assert harness.store.documents("payment_service", "payment") == {}


def test_only_a_redelivery_whose_worker_may_have_died_with_it_counts_towards_the_limit() -> None:
    harness = Harness(record_payment, max_deliveries=3)
    _, delivery = harness.message()
    event_id = again_event_id(delivery)
    for _ in range(3):  # three deaths counted already: one more would be the limit
        harness.counter.count("payment_service", event_id)
    # Given back by a worker that did not die (never run, from the rest of a dead worker's batch; or requeued), and
    # a retry's own first delivery: neither counts, so the message runs.
    unrun = Delivery(delivery.envelope, delivery.signature, redelivered=True, may_have_died=False)
    retry = Delivery(delivery.envelope, delivery.signature, retries=1)
    assert harness.handle(retry).outcome == "handled"
    assert harness.counter.deliveries == {("payment_service", event_id): 3}
    assert harness.handle(unrun).outcome == "duplicate"
    assert harness.dead.reasons == []


def test_a_redelivery_that_never_ran_is_handled_even_past_the_limit() -> None:
    harness = Harness(record_payment, max_deliveries=2)
    _, delivery = harness.message()
    for _ in range(5):
        harness.counter.count("payment_service", again_event_id(delivery))

    decision = harness.handle(Delivery(delivery.envelope, delivery.signature, redelivered=True, may_have_died=False))

    assert decision.outcome == "handled" and harness.dead.reasons == []
    assert harness.store.documents("payment_service", "payment") != {}


def again_event_id(delivery: Delivery) -> str:
    assert isinstance(delivery.envelope, str)
    return str(Envelope.model_validate_json(delivery.envelope).event_id)


@pytest.mark.parametrize("failure", [TransientError("gateway timeout"), ConcurrentUpdate("payment/1")])
def test_a_transient_failure_is_retried_with_growing_backoff_then_dead_lettered(failure: Exception) -> None:
    def failing(event: StockReserved, uow: UnitOfWork) -> None:
        raise failure

    harness = Harness(failing, max_retries=2, retry_backoff=0.5)
    _, delivery = harness.message()

    decisions = [harness.handle(Delivery(delivery.envelope, delivery.signature, retries=retries))
                 for retries in range(3)]

    assert [(d.outcome, d.countdown) for d in decisions] == [("retried", 0.5), ("retried", 1.0), ("dead-lettered", 0.0)]
    assert decisions[0].error is failure
    assert harness.dead.reasons == ["retries exhausted"] and harness.dead.records[0]["attempts"] == 3
    assert harness.counter.retries["payment_service"] == 2


def test_a_bug_in_a_handler_is_dead_lettered_with_its_traceback_and_the_worker_goes_on() -> None:
    def buggy(event: StockReserved, uow: UnitOfWork) -> None:
        raise KeyError("surprise")

    harness = Harness(buggy)
    _, delivery = harness.message()

    assert harness.handle(delivery).outcome == "dead-lettered"
    [record] = harness.dead.records
    assert record["reason"] == "handler error" and "KeyError: 'surprise'" in record["detail"]
    assert harness.handle(harness.message()[1]).outcome == "dead-lettered"  # still handling the next one


def test_an_unreachable_store_gives_the_message_back_untouched_after_a_pause() -> None:
    def unreachable(event: StockReserved, uow: UnitOfWork) -> None:
        raise Unreachable("connection refused")

    harness = Harness(unreachable, retry_backoff=0.25)
    _, delivery = harness.message()

    decision = harness.handle(delivery)

    assert decision.outcome == "requeued" and isinstance(decision.error, Unreachable)
    assert harness.slept == [0.25]
    assert harness.dead.records == []


def test_a_store_that_acknowledges_in_its_commit_says_so() -> None:
    def acknowledging(event: StockReserved, uow: UnitOfWork) -> None:
        assert uow.acknowledgement == "token"
        original = uow.commit

        def commit() -> None:
            original()
            uow.acknowledged = True

        uow.commit = commit  # type: ignore[method-assign]

    harness = Harness(acknowledging)
    _, delivery = harness.message(acknowledgement="token")

    assert harness.handle(delivery) == Decision("handled", acknowledged=True)
