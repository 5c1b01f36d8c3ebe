"""The monolith under the benchmark: `shop.bootstrap.bootstrap_monolith` (every service on the in-process bus, exactly
as `shop monolith` wires them) in one process, fed and observed through Redis instead of HTTP.

Fed: the load generator LPUSHes an order token; this process places the order with the order service's command
(`order_service.handlers.place_order` on the bus's unit of work + commit), the same call the full system's load
generator makes. Observed: when the order service has handled NotificationSent, the moment of the notification (the
event's `occurred_at`) goes into one Redis hash under the token, like the bare pipeline's last hop. That is one Redis
round trip in and one out per order, the minimum needed to drive a process from outside, and the same two the bare
pipeline pays.

Run: `python -m shop.bench.monolith_process <mode>` with REDIS_URL set (the benchmark does it). Stops on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import redis


def orders_key(mode: str) -> str:
    return f"bench:{mode}:orders"


def done_key(mode: str) -> str:
    return f"bench:{mode}:done"


def main(mode: str) -> None:
    from events.envelope import Envelope
    from events.settings import BusSettings
    from order_service import handlers
    from shop.bench import journey
    from shop.bootstrap import bootstrap_monolith
    from shop.processes import freeze_startup_heap

    settings = BusSettings()
    client = redis.Redis.from_url(settings.redis_url)
    bus = bootstrap_monolith(settings, os.environ.get("SHOP_MONOLITH_DISPATCH", "sync"))
    tokens: dict[str, str] = {}
    items = journey.order_items()

    def on_handled(service: str, envelope: Envelope) -> None:
        if service == "order_service" and envelope.type == "NotificationSent":
            token = tokens.pop(str(envelope.payload["order_id"]), None)
            if token is not None:  # the moment it was notified, as the full system's order records it
                client.hset(done_key(mode), token, repr(envelope.occurred_at.timestamp()))

    bus.on_handled = on_handled
    bus.start()
    if journey.needs_product():
        journey.create_product(bus.unit_of_work, bus.commit)
        bus.drain(timeout=30)  # the order service's catalogue now knows the product
    freeze_startup_heap()  # as `shop worker` does once it is ready
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.is_set():
            popped = client.brpop([orders_key(mode)], timeout=1)
            if popped is None:
                continue
            batch = [popped[1], *(client.rpop(orders_key(mode), 63) or [])]
            for token in batch:
                uow = bus.unit_of_work("order_service")
                order = handlers.place_order(uow, customer_id="bench", items=items, payment_method="card")
                tokens[str(order.id)] = token.decode()
                bus.commit(uow)
    finally:
        bus.stop(timeout=5)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "monolith")
