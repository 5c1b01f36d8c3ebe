"""What the payment service does."""

from __future__ import annotations

from events.catalog import PaymentFailed, PaymentProcessed, StockReserved
from events.unit_of_work import UnitOfWork
from payment_service.domain import Payment, PaymentStatus
from payment_service.gateway import SimulatedGateway
from payment_service.store import payments as payments_of


def charge_payment(event: StockReserved, uow: UnitOfWork, gateway: SimulatedGateway) -> None:
    """One payment per order, once its stock is reserved. The gateway call carries the order id as idempotency key,
    so a redelivery after a crash between "charged" and "committed" gets the gateway's first answer instead of a
    second charge.

    Why StockReserved carries the amount and the method (copied by the product service from OrderCreated) rather
    than payment keeping them from an OrderCreated of its own: then this step depends on one message only. Two
    messages in one queue can be reordered by a redelivery (a killed worker's message returns after the visibility
    timeout, the outbox relay re-sends late), and a StockReserved waiting for its OrderCreated would have to retry
    for as long as that takes, or be dead-lettered when the retry budget runs out first. The price is a few fields
    the product service passes along without reading them."""
    payments = payments_of(uow)
    if payments.get(event.order_id) is not None:
        return
    result = gateway.charge(str(event.order_id), event.total, event.payment_method)
    if result.approved:
        payment = Payment(
            order_id=event.order_id, amount=event.total, status=PaymentStatus.CHARGED,
            gateway_reference=result.reference,
        )
        uow.publish(PaymentProcessed(order_id=event.order_id, payment_id=payment.id, amount=event.total))
    else:
        payment = Payment(
            order_id=event.order_id, amount=event.total, status=PaymentStatus.DECLINED, reason=result.reason
        )
        uow.publish(PaymentFailed(order_id=event.order_id, amount=event.total, reason=result.reason or "declined"))
    payments.save(payment)
