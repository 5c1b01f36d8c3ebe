"""The two measurements: saturation throughput (closed loop) and end-to-end latency at a fixed offered load (open
loop). Every loop here is bounded by a deadline.

Saturation is measured closed loop, with a fixed number of orders in flight, rather than by draining a pre-filled
backlog: a backlog is drained hop by hop (the order queue fills with confirmations before any notification comes
back), so the hops do not all run at once and the figure depends on the backlog size. With orders in flight every
hop has work all the time, which is the state a saturated system is in.

The load generator's own garbage collector is paused while it measures (`generator_gc_paused`): a full collection of
its heap took 50 to 80 ms here, and in an open loop every order scheduled meanwhile is placed late and counted late,
so one collection of the benchmark's client set the p99 of a whole latency run.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from hdrh.histogram import HdrHistogram

from shop.bench.pipelines import Pipeline
from shop.bench.procs import cpu_seconds, machine_busy_seconds, own_cpu_seconds

HISTOGRAM_MAX_US = 120_000_000


class Stalled(RuntimeError):
    """Orders stopped completing: a worker died or the pipeline lost messages. The run is void."""


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def _database_cpu(pipeline: Pipeline) -> dict[int, float] | None:
    """CPU seconds so far of each database server process serving the pipeline (None: no server of its own here)."""
    pids = pipeline.database_pids()
    return None if pids is None else {pid: cpu_seconds(pid) for pid in pids}


def _database_cpu_spent(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
    """CPU the database's processes spent between two readings; a process that appeared meanwhile counts whole, one
    that ended meanwhile is missed (the pools keep their connections, so neither happens in a steady run)."""
    if before is None or after is None:
        return None
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _redis_cpu(pipeline: Pipeline) -> float:
    info = pipeline.redis.info("cpu")
    return float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0))


@dataclass
class SaturationResult:
    throughput: float
    """orders/s completed during the measured window (warm-up excluded)"""
    completed: int
    window_s: float
    worker_cpu_s: float
    cpu_ms_per_order: float
    worker_cpu_share: dict[str, float]
    """each worker's fraction of one core during the window"""
    generator_cpu_ms_per_order: float
    redis_cpu_ms_per_order: float
    """redis-server CPU (INFO cpu) per order; other clients of the same server are included, so an upper bound"""
    database_cpu_ms_per_order: float | None
    """the database server's CPU per order (its backends' /proc counters), None where the database runs inside the
    workers (SQLite: in their CPU) or the store is Redis"""
    foreign_cpu_share: float
    """cores used by processes other than the workers, the load generator and Redis: the machine's noise"""
    in_flight: int

    def as_dict(self) -> dict:
        return asdict(self)


def settle(pipeline: Pipeline, order_ids: set[str], timeout: float, poll_interval: float = 0.02) -> None:
    """Wait until every given order completed, so the next run starts on an empty pipeline."""
    deadline = time.monotonic() + timeout
    while order_ids:
        order_ids -= set(pipeline.done(list(order_ids)))
        if not order_ids:
            return
        if time.monotonic() > deadline:
            pipeline.workers.check_alive()
            raise Stalled(f"{pipeline.mode}: {len(order_ids)} orders still in flight after {timeout}s")
        time.sleep(poll_interval)


@contextmanager
def generator_gc_paused() -> Iterator[None]:
    """This process's cyclic garbage collector off for one bounded measurement (reference counting still frees what
    it can), after a collection, and on again afterwards. The pipelines' processes keep theirs. A decorator too (each
    call of the decorated function gets a pause of its own)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def warm_up(pipeline: Pipeline, orders: int, timeout: float) -> float:
    """Push a few orders through (imports, connections, caches) and prove every worker is consuming."""
    started = time.monotonic()
    settle(pipeline, {pipeline.place() for _ in range(orders)}, timeout)
    return time.monotonic() - started


@generator_gc_paused()
def saturation(
    pipeline: Pipeline, *, in_flight: int, warmup_s: float, measure_s: float, poll_interval: float, settle_s: float
) -> SaturationResult:
    outstanding = {pipeline.place() for _ in range(in_flight)}
    pids = pipeline.pids()
    started = time.monotonic()
    measuring_from = started + warmup_s
    measuring_until = measuring_from + measure_s
    before: dict[str, float] | None = None
    generator_before = redis_before = machine_before = 0.0
    database_before: dict[int, float] | None = None
    window_start = 0.0
    completed = 0
    last_progress = started
    while True:
        finished = pipeline.done(list(outstanding))
        now = time.monotonic()
        if finished:
            last_progress = now
        elif now - last_progress > settle_s:
            pipeline.workers.check_alive()
            raise Stalled(f"{pipeline.mode}: no order completed for {settle_s}s")
        outstanding -= set(finished)
        if before is None:
            if now >= measuring_from:  # completions seen by this poll happened before the window: not counted
                before, generator_before, window_start = _cpu(pids), own_cpu_seconds(), now
                redis_before, machine_before = _redis_cpu(pipeline), machine_busy_seconds()
                database_before = _database_cpu(pipeline)
        else:
            completed += len(finished)
            if now >= measuring_until:
                break
        outstanding |= {pipeline.place() for _ in finished}
        time.sleep(poll_interval)
    after, generator_after, window = _cpu(pids), own_cpu_seconds(), now - window_start
    redis_after, machine_after = _redis_cpu(pipeline), machine_busy_seconds()
    database_cpu = _database_cpu_spent(database_before, _database_cpu(pipeline))
    settle(pipeline, outstanding, settle_s)
    per_worker = {name: after[name] - before[name] for name in pids}
    worker_cpu = sum(per_worker.values())
    generator_cpu, redis_cpu = generator_after - generator_before, redis_after - redis_before
    foreign = (machine_after - machine_before) - worker_cpu - generator_cpu - redis_cpu - (database_cpu or 0.0)
    return SaturationResult(
        throughput=completed / window,
        completed=completed,
        window_s=round(window, 3),
        worker_cpu_s=round(worker_cpu, 3),
        cpu_ms_per_order=1000 * worker_cpu / max(completed, 1),
        worker_cpu_share={name: round(cpu / window, 3) for name, cpu in per_worker.items()},
        generator_cpu_ms_per_order=1000 * generator_cpu / max(completed, 1),
        redis_cpu_ms_per_order=1000 * redis_cpu / max(completed, 1),
        database_cpu_ms_per_order=None if database_cpu is None else 1000 * database_cpu / max(completed, 1),
        foreign_cpu_share=round(max(0.0, foreign) / window, 3),
        in_flight=in_flight,
    )


@generator_gc_paused()
def latency(
    pipeline: Pipeline, *, rate: float, duration_s: float, poll_interval: float, settle_s: float
) -> dict:
    """Open loop: orders are sent on a fixed schedule whatever the completions do. Latency runs from each order's
    *scheduled* send time (so a late sender cannot hide queueing: no coordinated omission) to the moment it was
    notified, as the pipeline recorded it (`Pipeline.done`). The `_polled` figures run to the first poll that saw the
    whole journey done instead (one more hop in the full system, plus up to a poll interval)."""
    total = max(1, int(rate * duration_s))
    histogram = HdrHistogram(1, HISTOGRAM_MAX_US, 3)
    polled = HdrHistogram(1, HISTOGRAM_MAX_US, 3)
    scheduled: dict[str, float] = {}
    start = time.monotonic() + 0.01
    wall = time.time() - time.monotonic()  # monotonic -> this machine's clock, which the pipelines' stamps are on
    machine_before, own_before, workers_before = machine_busy_seconds(), own_cpu_seconds(), _cpu(pipeline.pids())
    redis_before, database_before = _redis_cpu(pipeline), _database_cpu(pipeline)
    sent = 0
    max_lag = 0.0
    next_poll = start
    hard_stop = start + duration_s + settle_s
    while sent < total or scheduled:
        now = time.monotonic()
        while sent < total and start + sent / rate <= now:
            due = start + sent / rate
            max_lag = max(max_lag, now - due)
            scheduled[pipeline.place()] = due
            sent += 1
            now = time.monotonic()
        if now >= next_poll and scheduled:
            finished = pipeline.done(list(scheduled))
            seen_at = time.monotonic()
            for order_id, notified_at in finished.items():
                due = scheduled.pop(order_id)
                histogram.record_value(max(1, int((notified_at - wall - due) * 1e6)))
                polled.record_value(max(1, int((seen_at - due) * 1e6)))
            next_poll = seen_at + poll_interval
        if now > hard_stop:
            break
        wake = min(next_poll, start + sent / rate if sent < total else next_poll)
        time.sleep(max(0.0, min(wake - time.monotonic(), poll_interval)))
    elapsed = time.monotonic() - start
    database = _database_cpu_spent(database_before, _database_cpu(pipeline)) or 0.0
    ours = database + (own_cpu_seconds() - own_before) + (_redis_cpu(pipeline) - redis_before) + sum(
        after - workers_before.get(name, after) for name, after in _cpu(pipeline.pids()).items()
    )
    foreign = max(0.0, machine_busy_seconds() - machine_before - ours) / elapsed
    incomplete = len(scheduled)
    if incomplete:
        # Not done by the deadline: count them at the time waited so far, never as fast ones; the run is flagged.
        waited = time.monotonic()
        for due in scheduled.values():
            histogram.record_value(int((waited - due) * 1e6))
            polled.record_value(int((waited - due) * 1e6))
        settle(pipeline, set(scheduled), settle_s * 3)
    to_ms = lambda us: round(us / 1000, 2)  # noqa: E731
    return {
        "offered_rate": rate,
        "sent": sent,
        "completed": sent - incomplete,
        "incomplete": incomplete,
        "p50_ms": to_ms(histogram.get_value_at_percentile(50)),
        "p95_ms": to_ms(histogram.get_value_at_percentile(95)),
        "p99_ms": to_ms(histogram.get_value_at_percentile(99)),
        "max_ms": to_ms(histogram.get_max_value()),
        "mean_ms": to_ms(histogram.get_mean_value()),
        "p50_polled_ms": to_ms(polled.get_value_at_percentile(50)),
        "p99_polled_ms": to_ms(polled.get_value_at_percentile(99)),
        "max_send_lag_ms": round(max_lag * 1000, 2),
        "poll_interval_ms": poll_interval * 1000,
        "foreign_cpu_share": round(foreign, 3),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
