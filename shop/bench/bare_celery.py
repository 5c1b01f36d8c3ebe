"""The yardstick: a bare celery pipeline with the shop's hops and handlers that do nothing.

One task, `hop`, served on one queue per shop service of the order's journey (shop/bench/journey.py: e.g.
payment -> order -> notification -> order), one solo worker per queue, JSON, celery's defaults otherwise (no
acks_late, no inbox, no signing, no validation, no state; its start-up heap frozen once ready, as `shop worker`'s
is). Each hop sends the order on to the next queue of the
route it carries; the hop on the notification service's queue notes the time (the moment the order is notified, as
the full system's NotificationSent records it) and the last one writes that time into one Redis hash, the only work
any hop does. What the full system costs beyond this floor is the price of its guarantees plus its own overheads.

Run a worker: `python -m shop.bench.bare_celery <queue>` with REDIS_URL set (the benchmark does it).
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import time
from functools import cache

import redis
from celery import Celery
from celery.signals import worker_ready

from events.settings import BusSettings

QUEUE_PREFIX = "bench.bare."
DONE_KEY = "bench:bare:done"
"""hash order id -> the time its notification hop ran (epoch seconds), written by the last hop."""

app = Celery("bench.bare", broker=BusSettings().redis_url, set_as_current=False)
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                worker_hijack_root_logger=False)


def queue_for(service: str) -> str:
    return QUEUE_PREFIX + service.removesuffix("_service")


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(BusSettings().redis_url)


@app.task(name="bench.bare.hop")
def hop(order_id: str | None, route: list[list], notifies: bool = False, notified_at: float | None = None) -> None:
    """`route`: the remaining [queue, side queues, notifies] steps; the side queues get a copy that ends there.
    `notifies`: this hop is the notification service's, so it notes when the order is notified."""
    if notifies:
        notified_at = time.time()
    if route:
        (queue, sides, next_notifies), rest = route[0], route[1:]
        hop.apply_async((order_id, rest, next_notifies, notified_at), queue=queue)
        for side in sides:
            hop.apply_async((None, []), queue=side)
    elif order_id is not None:
        _redis().hset(DONE_KEY, order_id, repr(notified_at if notified_at is not None else time.time()))


def place(order_id: str, route: tuple[tuple[str, tuple[str, ...], bool], ...]) -> None:
    """What the load generator does per order: the first hop, as the shop's first event enters its first queue."""
    (queue, _, notifies), rest = route[0], route[1:]
    hop.apply_async((order_id, [list(step) for step in rest], notifies), queue=queue)


def _freeze_when_ready(**_: object) -> None:
    """What `shop worker` does once ready (shop.processes.freeze_startup_heap, not imported here: the yardstick loads
    none of the shop), so that no side's start-up heap is walked by its collections."""
    gc.collect()
    gc.freeze()


def run_worker(queue: str) -> None:
    """Same worker flags as `shop worker` (solo pool, one process, no gossip/mingle/heartbeat)."""
    if not queue.startswith(QUEUE_PREFIX):
        raise SystemExit(f"usage: python -m shop.bench.bare_celery {QUEUE_PREFIX}<service>")
    worker_ready.connect(_freeze_when_ready, weak=False)
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
