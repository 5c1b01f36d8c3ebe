"""The order aggregate: its total and the only moves its status may make."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from events.catalog import OrderLine
from order_service.domain import Order, OrderStatus


def line(quantity: int, unit_price: str, product_id: str = "p") -> OrderLine:
    return OrderLine(product_id=product_id, quantity=quantity, unit_price=unit_price)


def new_order() -> Order:
    return Order.place("alice", [line(2, "12.50", "book"), line(1, "0.99", "pen")], "card")


def test_the_service_computes_the_total_from_the_lines():
    assert new_order().total == Decimal("25.99")


def test_the_total_is_exact_to_the_cent():
    order = Order.place("bob", [line(3, "0.10")], "card")
    assert order.total == Decimal("0.30")
    assert order.model_dump(mode="json")["total"] == "0.30"


def test_a_new_order_is_pending_and_unsettled():
    order = new_order()
    assert order.status is OrderStatus.PENDING
    assert order.settled_at is None and order.reason is None and order.notified_at is None


def test_each_order_gets_its_own_id():
    assert new_order().id != new_order().id


def test_confirming_a_pending_order_settles_it():
    order = new_order()
    assert order.confirm() is True
    assert order.status is OrderStatus.CONFIRMED
    assert order.settled_at is not None


def test_cancelling_a_pending_order_records_the_reason():
    order = new_order()
    assert order.cancel("card declined") is True
    assert order.status is OrderStatus.CANCELLED
    assert order.reason == "card declined"
    assert order.settled_at is not None


def test_confirm_after_cancel_is_a_no_op():
    order = new_order()
    order.cancel("card declined")
    before = order.model_copy()

    assert order.confirm() is False
    assert order == before


def test_cancel_after_confirm_is_a_no_op():
    order = new_order()
    order.confirm()
    before = order.model_copy()

    assert order.cancel("late failure") is False
    assert order == before
    assert order.reason is None


def test_a_second_confirmation_changes_nothing():
    order = new_order()
    order.confirm()
    before = order.model_copy()
    assert order.confirm() is False
    assert order == before


def test_a_customer_is_marked_notified_once():
    order = new_order()
    first, second = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    assert order.mark_notified(first) is True
    assert order.mark_notified(second) is False
    assert order.notified_at == first


def test_an_order_survives_its_stored_form():
    order = new_order()
    order.confirm()
    assert Order.model_validate(order.model_dump(mode="json")) == order
