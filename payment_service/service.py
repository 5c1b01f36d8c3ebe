"""The payment service as the bus sees it, and the dependencies its handlers get."""

from __future__ import annotations

from typing import Any

from events.bus import ServiceSpec
from events.catalog import PaymentFailed, PaymentProcessed, StockReserved
from payment_service import handlers
from payment_service.gateway import GatewaySettings, Ledger, SimulatedGateway


def dependencies(ledger: Ledger) -> dict[str, Any]:
    """The gateway, over the books the wiring chose for it (in memory, or the gateway's own Redis hashes)."""
    return {"gateway": SimulatedGateway(ledger, GatewaySettings())}


SERVICE = ServiceSpec(
    name="payment_service",
    handlers={StockReserved: handlers.charge_payment},
    dependencies=dependencies,
    calls_out=(StockReserved,),  # the card gateway
    publishes=(PaymentProcessed, PaymentFailed),
)
