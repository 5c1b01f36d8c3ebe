"""The yardstick: a bare celery pipeline with the shop's hops and handlers that do nothing.

payment -> order (confirm) -> notification -> order (record), each task on its own queue, one solo worker per
queue, JSON, celery's defaults otherwise (no acks_late, no inbox, no signing, no validation, no state). The last hop
records the completion time in one Redis hash, which is the only work any handler does. What the full system costs
beyond this floor is the price of its guarantees plus its own overheads.

Run a worker: `python -m benchmarks.bare_celery <queue>` with REDIS_URL set (the benchmark does it).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from functools import cache

import redis
from celery import Celery

from events.settings import BusSettings

PAYMENT, ORDER, NOTIFICATION = "bench.bare.payment", "bench.bare.order", "bench.bare.notification"
QUEUES = (PAYMENT, ORDER, NOTIFICATION)
DONE_KEY = "bench:bare:done"
"""hash order id -> completion time (epoch seconds) written by the last hop."""

app = Celery("bench.bare", broker=BusSettings().redis_url, set_as_current=False)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    task_routes={
        "bench.bare.charge_payment": {"queue": PAYMENT},
        "bench.bare.confirm_order": {"queue": ORDER},
        "bench.bare.notify_customer": {"queue": NOTIFICATION},
        "bench.bare.record_notification": {"queue": ORDER},
    },
)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(BusSettings().redis_url)


@app.task(name="bench.bare.charge_payment")
def charge_payment(order_id: str) -> None:
    confirm_order.apply_async((order_id,))


@app.task(name="bench.bare.confirm_order")
def confirm_order(order_id: str) -> None:
    notify_customer.apply_async((order_id,))


@app.task(name="bench.bare.notify_customer")
def notify_customer(order_id: str) -> None:
    record_notification.apply_async((order_id,))


@app.task(name="bench.bare.record_notification")
def record_notification(order_id: str) -> None:
    _redis().hset(DONE_KEY, order_id, repr(time.time()))


def place(order_id: str) -> None:
    """What the load generator does per order: the first hop, exactly as the shop's first event enters."""
    charge_payment.apply_async((order_id,))


def run_worker(queue: str) -> None:
    """Same worker flags as `shop worker` (solo pool, one process, no gossip/mingle/heartbeat)."""
    if queue not in QUEUES:
        raise SystemExit(f"queue must be one of {QUEUES}")
    app.worker_main(
        [
            "--quiet",
            "worker",
            f"--queues={queue}",
            "--pool=solo",
            "--concurrency=1",
            f"--hostname={queue}.{os.getpid()}@{socket.gethostname()}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


if __name__ == "__main__":
    run_worker(sys.argv[1] if len(sys.argv) > 1 else "")
