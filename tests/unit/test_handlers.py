"""Each service's handlers, driven through the in-process bus with every service subscribed: the whole journey
of an order without a broker."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import pytest

from events.bus import ServiceSpec
from events.catalog import OrderCreated, PaymentFailed, PaymentProcessed
from order_service.domain import OrderStatus
from payment_service.domain import PaymentStatus
from shop.services import SERVICES
from tests.support.shop import Shop


@pytest.fixture
def log_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "notifications.log"
    monkeypatch.setenv("SHOP_NOTIFICATION_LOG", str(path))
    return path


@pytest.fixture
def shop(log_path: Path) -> Shop:
    return Shop(log_path)


# -- the journeys -----------------------------------------------------------------------------------------------------
def test_a_card_payment_confirms_the_order_and_notifies_once(shop: Shop):
    order = shop.place("card")

    settled = shop.order(order.id)
    assert settled.status is OrderStatus.CONFIRMED
    assert settled.notified_at is not None
    payment = shop.payment(order.id)
    assert payment is not None and payment.status is PaymentStatus.CHARGED and payment.amount == Decimal("25.00")
    assert shop.ledger.charges == [str(order.id)]
    [notification] = shop.notifications()
    assert notification["type"] == "OrderConfirmed"
    assert notification["order_id"] == str(order.id) and notification["customer_id"] == "alice"
    assert "25.00" in notification["message"]
    assert shop.published_types() == [
        "OrderCreated", "StockReserved", "PaymentProcessed", "OrderConfirmed", "NotificationSent",
    ]
    assert shop.stock("book") == 998
    assert shop.bus.dead_letters == [] and shop.bus.unroutable == []


def test_every_event_of_an_order_shares_its_correlation_id_and_names_its_cause(shop: Shop):
    order = shop.place("card")

    envelopes = shop.bus.published
    assert {envelope.correlation_id for envelope in envelopes} == {order.id}
    assert envelopes[0].causation_id is None
    for cause, effect in itertools.pairwise(envelopes):
        assert effect.causation_id == cause.event_id
    assert [envelope.producer for envelope in envelopes] == [
        "order_service", "product_service", "payment_service", "order_service", "notification_service",
    ]


def test_declined_payment_cancels_the_order(shop: Shop):
    order = shop.place("card_declined")

    cancelled = shop.order(order.id)
    assert cancelled.status is OrderStatus.CANCELLED
    assert cancelled.reason == "card declined"
    payment = shop.payment(order.id)
    assert payment is not None and payment.status is PaymentStatus.DECLINED
    assert shop.ledger.charges == []
    [notification] = shop.notifications()
    assert notification["type"] == "OrderCancelled" and "card declined" in notification["message"]
    assert shop.published_types() == [
        "OrderCreated", "StockReserved", "PaymentFailed", "OrderCancelled", "StockReleased", "NotificationSent",
    ]


def test_an_order_above_the_limit_is_cancelled_for_insufficient_funds(shop: Shop):
    shop.create_product("piano", "10000.01", stock=1)
    order = shop.place("card", product_id="piano", quantity=1)

    cancelled = shop.order(order.id)
    assert cancelled.status is OrderStatus.CANCELLED
    assert cancelled.reason is not None and cancelled.reason.startswith("insufficient funds")
    assert shop.ledger.charges == []


def test_an_order_exactly_at_the_limit_is_charged(shop: Shop):
    shop.create_product("harp", "5000.00", stock=2)
    order = shop.place("card", product_id="harp", quantity=2)

    assert shop.order(order.id).status is OrderStatus.CONFIRMED
    assert shop.ledger.charges == [str(order.id)]


def test_a_flaky_gateway_is_retried_until_the_order_is_confirmed(shop: Shop):
    order = shop.place("card_flaky")

    assert shop.order(order.id).status is OrderStatus.CONFIRMED
    assert shop.ledger.attempts[str(order.id)] == 3  # two timeouts (the default), then the charge
    assert shop.ledger.charges == [str(order.id)]
    assert len(shop.notifications()) == 1
    assert shop.bus.dead_letters == []


def test_a_gateway_that_never_recovers_dead_letters_the_event_and_leaves_the_order_pending(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SHOP_GATEWAY_FLAKY_FAILURES", "100")
    shop = Shop(log_path)

    order = shop.place("card_flaky")

    assert shop.order(order.id).status is OrderStatus.PENDING
    [dead] = shop.bus.dead_letters
    assert (dead["service"], dead["reason"], dead["attempts"]) == ("payment_service", "retries exhausted", 5)
    assert dead["envelope"].type == "StockReserved"
    assert shop.ledger.charges == [] and shop.notifications() == []


def test_a_late_payment_failure_does_not_cancel_a_confirmed_order(shop: Shop):
    order = shop.place("card")
    published_before = len(shop.bus.published)

    shop.publish(PaymentFailed(order_id=order.id, amount=order.total, reason="too late"), correlation_id=order.id)

    assert shop.order(order.id).status is OrderStatus.CONFIRMED
    assert shop.order(order.id).reason is None
    # No OrderCancelled followed. (The product service does release on it: it takes the payment service's word, and
    # that service decides once per order; this stray event is not one the system can produce.)
    assert "OrderCancelled" not in shop.published_types()[published_before:]
    assert len(shop.notifications()) == 1


def test_a_late_payment_success_does_not_confirm_a_cancelled_order(shop: Shop):
    order = shop.place("card_declined")

    shop.publish(
        PaymentProcessed(order_id=order.id, payment_id=uuid4(), amount=order.total), correlation_id=order.id
    )

    assert shop.order(order.id).status is OrderStatus.CANCELLED
    assert "OrderConfirmed" not in shop.published_types()
    assert [line["type"] for line in shop.notifications()] == ["OrderCancelled"]


def test_a_payment_for_an_unknown_order_changes_nothing(shop: Shop):
    stray = uuid4()
    shop.publish(PaymentProcessed(order_id=stray, payment_id=uuid4(), amount=Decimal("1.00")), correlation_id=stray)

    assert shop.published_types() == ["PaymentProcessed"]
    assert shop.bus.store.documents("order_service", "order") == {}
    assert shop.bus.dead_letters == []


# -- redelivery -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("payment_method", ["card", "card_declined", "card_flaky"])
def test_redelivering_every_event_to_every_handler_has_no_second_effect(shop: Shop, payment_method: str):
    order = shop.place(payment_method)
    documents = dict(shop.bus.store.records)
    published = list(shop.bus.published)
    notifications = shop.notifications()
    attempts = dict(shop.ledger.attempts)

    shop.redeliver_everything()

    assert shop.bus.store.records == documents  # no document rewritten (versions unchanged)
    assert shop.bus.published == published  # no event published twice
    assert shop.notifications() == notifications and len(notifications) == 1
    assert shop.ledger.attempts == attempts  # the gateway was not even asked again
    assert shop.ledger.charges == ([str(order.id)] if payment_method != "card_declined" else [])
    assert shop.bus.dead_letters == []


def test_the_inbox_guards_even_a_handler_that_is_not_idempotent_itself(shop: Shop):
    calls: list[str] = []

    def count_order(event: OrderCreated, uow: object) -> None:
        calls.append(str(event.order_id))
        uow.put("seen", str(event.order_id), {"count": len(calls)})  # type: ignore[attr-defined]

    shop.bus.subscribe(ServiceSpec(name="audit", handlers={OrderCreated: count_order}), {})
    order = shop.place("card")
    assert calls == [str(order.id)]

    shop.redeliver_everything()
    shop.redeliver_everything()

    assert calls == [str(order.id)]
    assert shop.bus.store.documents("audit", "seen") == {str(order.id): {"count": 1}}


def test_every_service_remembers_each_event_it_handled(shop: Shop):
    shop.place("card")

    for envelope in shop.bus.published:
        for spec in SERVICES.values():
            if any(model.type_name == envelope.type for model in spec.handlers):
                assert shop.bus.unit_of_work(spec.name, envelope).already_handled(), (spec.name, envelope.type)
    # ...and the inbox is per service: an event is not "handled" by a service that never received it.
    created = shop.bus.published[0]
    assert not shop.bus.unit_of_work("notification_service", created).already_handled()
