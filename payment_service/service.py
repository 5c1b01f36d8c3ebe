"""The payment service as the bus sees it, and the dependencies its handlers get."""

from __future__ import annotations

from typing import Any

import redis

from events.bus import ServiceSpec
from events.catalog import PaymentFailed, PaymentProcessed, StockReserved
from payment_service import handlers
from payment_service.gateway import (
    GatewaySettings,
    InMemoryLedger,
    RedisLedger,
    SimulatedGateway,
)


def dependencies(client: redis.Redis | None = None) -> dict[str, Any]:
    ledger = RedisLedger(client) if client is not None else InMemoryLedger()
    return {"gateway": SimulatedGateway(ledger, GatewaySettings())}


SERVICE = ServiceSpec(
    name="payment_service",
    handlers={StockReserved: handlers.charge_payment},
    dependencies=dependencies,
    publishes=(PaymentProcessed, PaymentFailed),
)
