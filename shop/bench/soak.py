"""`shop bench --soak N`: N orders through the full system on one store, sampled every tenth of the run, to show
whether anything grows with the data (throughput, latency, worker memory, Redis memory, database size).

The load is closed loop (a fixed number of orders in flight, as in the saturation runs), so each tenth's throughput
is what the system managed, and each order's latency runs from the moment it was placed to the moment it was notified
(the order's `notified_at`). What a long run leaves behind is bounded by settings the run states in its result:

* inbox marks (deduplication): `SHOP_INBOX_TTL` seconds (Redis: a TTL per mark; SQL: the relay deletes older rows);
* the event log: `SHOP_EVENT_LOG_LENGTH` entries (a capped stream, trimmed as it is written);
* outbox entries: deleted when the broker took them (SQL) or when the consumer settled them (Redis); a leftover is
  re-sent by the relay after `SHOP_REDELIVER_AFTER` seconds, so none stays;
* delivery counters: deleted by the commit that handles the message;
* the notification log's ids in a worker's memory: the last `SHOP_NOTIFICATION_LOG_REMEMBER` (the log file itself is
  the customer-visible output, and grows with it).

The soak shortens these bounds (SHOP_SOAK_INBOX_TTL, SHOP_SOAK_EVENT_LOG_LENGTH, ...), so that they apply
within the run and the memory per settled order can be seen to level off; the documents themselves (orders,
payments, ...) are the shop's data and grow with it, by a constant amount per order.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.adapters.redis.keys import Keys
from shop.bench import measure
from shop.bench.pipelines import FullSystem
from shop.bench.procs import WorkerGroup, cpu_seconds, rss_mib


class SoakSettings(BaseSettings):
    """Knobs of `shop bench --soak` (environment prefix SHOP_SOAK_)."""

    model_config = SettingsConfigDict(env_prefix="SHOP_SOAK_", extra="ignore")

    out_dir: Path = Field(Path("var/bench"), description="where soak.json, soak.png and worker logs go")
    orders: int = Field(100_000, ge=100, description="orders placed through the full system")
    store: str = Field("redis", pattern="^(redis|sqlite|postgres)$", description="every service's store")
    samples: int = Field(10, ge=2, le=100, description="how many equal parts the run is sampled in")
    in_flight: int = Field(16, ge=1, description="orders kept in flight by the closed-loop load generator")
    warmup_orders: int = Field(1000, ge=0, description="orders sent before the run, not counted (caches, pools)")
    inbox_ttl: int = Field(120, ge=1, description="seconds a handled event id is kept for deduplication, in this run")
    redeliver_after: float = Field(60.0, gt=0, description="the relay re-sends unsettled messages after this, in "
                                   "this run (kept below the inbox TTL, as it must be)")
    event_log_length: int = Field(20_000, ge=100, description="events kept in the event log, in this run")
    notification_log_remember: int = Field(10_000, ge=1, description="recent ids the notification log keeps to "
                                           "refuse a redelivered line, in this run")
    poll_interval_s: float = Field(0.02, description="how often finished orders are looked for (see BenchSettings)")
    settle_s: float = Field(60.0, description="longest pause without a completed order before the run is void")
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/shop_soak_{service}"


def _redis_memory(pipeline: FullSystem) -> dict[str, int]:
    memory = pipeline.redis.info("memory")
    keyspace = pipeline.redis.info("keyspace")
    db: dict[str, Any] = next(iter(keyspace.values()), {}) if keyspace else {}
    return {"used_memory": int(memory["used_memory"]), "keys": int(db.get("keys", 0)),
            "expiring_keys": int(db.get("expires", 0)),
            "event_log": int(pipeline.redis.xlen(Keys.event_log()))}


def _database_bytes(store: str, work: Path, postgres_url: str) -> int | None:
    """What the services' own databases take on disk (SQLite files with their WAL; PostgreSQL's own count);
    None for the Redis store (its data is in Redis memory)."""
    if store == "sqlite":
        return sum(path.stat().st_size for path in work.glob("db-*.sqlite3*"))
    if store == "postgres":
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        from events.adapters.sql.engine import normalise
        from shop.services import SERVICES

        names = [make_url(normalise(postgres_url.replace("{service}", s))).database for s in SERVICES]
        admin = create_engine(make_url(normalise(postgres_url.replace("{service}", "x"))).set(database="postgres"))
        try:
            with admin.connect() as connection:
                return int(sum(connection.execute(text("SELECT pg_database_size(:name)"), {"name": name}).scalar_one()
                               for name in names))
        finally:
            admin.dispose()
    return None


def _inbox_rows(store: str, work: Path) -> int | None:
    """Inbox rows over every SQLite database (the Redis store's marks are counted among its expiring keys)."""
    if store != "sqlite":
        return None
    import sqlite3

    total = 0
    for path in work.glob("db-*.sqlite3"):
        with sqlite3.connect(path) as connection:
            total += connection.execute("SELECT count(*) FROM inbox").fetchone()[0]
    return total


def run_soak(settings: SoakSettings, report: Callable[[str], None] = print) -> dict[str, Any]:
    from events.settings import BusSettings
    from shop.bench.runner import _env, _fresh_postgres, fresh_work, restore_keys
    from shop.redis_server import RedisServer

    started = time.monotonic()
    out = settings.out_dir
    work = (out / "soak-work").resolve()
    if settings.store == "postgres" and (skipped := _fresh_postgres(settings.postgres_url)):
        raise RuntimeError(skipped)  # before anything is started or changed in this process
    previous_keys = fresh_work(work)
    bounds = {"SHOP_INBOX_TTL": str(settings.inbox_ttl), "SHOP_REDELIVER_AFTER": str(settings.redeliver_after),
              "SHOP_EVENT_LOG_LENGTH": str(settings.event_log_length),
              "SHOP_NOTIFICATION_LOG_REMEMBER": str(settings.notification_log_remember)}
    url = {"redis": "redis", "sqlite": f"sqlite:///{work}/db-{{service}}.sqlite3",
           "postgres": settings.postgres_url}[settings.store]
    server = RedisServer(work / "redis", persistent=False).start()
    workers = WorkerGroup({**_env(work), **bounds}, work / "logs")
    pipeline: FullSystem | None = None
    result: dict[str, Any] = {
        "meta": {"started_at": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                 "settings": json.loads(settings.model_dump_json(exclude={"out_dir"}))},
        "bounds": {
            "inbox_ttl_s": settings.inbox_ttl, "event_log_length": settings.event_log_length,
            "redeliver_after_s": settings.redeliver_after,
            "notification_log_remember": settings.notification_log_remember,
            "outbox": "entries deleted once sent (SQL) or settled by their consumer (Redis)",
        },
        "samples": [],
    }
    try:
        bus = BusSettings(inbox_ttl=settings.inbox_ttl, redeliver_after=settings.redeliver_after,
                          event_log_length=settings.event_log_length)
        bus = bus.model_copy(update={"redis_url": server.url, "broker_url": server.url})
        pipeline = FullSystem(bus, workers, settings.store, url)
        pipeline.start()
        warm = measure.warm_up(pipeline, 20, timeout=60)
        for _ in range(settings.warmup_orders // settings.in_flight):
            measure.settle(pipeline, {pipeline.place() for _ in range(settings.in_flight)}, settings.settle_s)
        report(f"soak full-{settings.store}: workers up ({warm:.1f}s), {settings.warmup_orders} orders of warm-up")
        result["meta"]["redis"] = pipeline.redis.info("server").get("redis_version")
        result["samples"] = _closed_loop(pipeline, settings, work, report)
        result["verdict"] = verdict(result["samples"])
        workers.check_alive()
    finally:
        workers.stop_all()
        if pipeline is not None:
            pipeline.close()
        server.stop()
        restore_keys(previous_keys)
    result["meta"]["seconds"] = round(time.monotonic() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from shop.bench.plot import plot_soak

        plot_soak(result, out / "soak.png")
    except ImportError:
        result["meta"]["png"] = "no PNG: matplotlib is missing"
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    return result


def _closed_loop(pipeline: FullSystem, settings: SoakSettings, work: Path,
                 report: Callable[[str], None]) -> list[dict[str, Any]]:
    per_part = settings.orders // settings.samples
    placed: dict[str, float] = {}
    sent = done = 0
    samples: list[dict[str, Any]] = []
    pids = pipeline.pids()
    run_started = part_started = time.monotonic()
    part_done, part_cpu = 0, sum(cpu_seconds(pid) for pid in pids.values())
    histogram = HdrHistogram(1, measure.HISTOGRAM_MAX_US, 3)
    memory_before = _redis_memory(pipeline)["used_memory"]
    last_progress = time.monotonic()
    while done < per_part * settings.samples:
        while len(placed) < settings.in_flight and sent < per_part * settings.samples:
            placed[pipeline.place()] = time.time()  # the clock the pipeline stamps the notification with
            sent += 1
        finished = pipeline.done(list(placed))
        seen_at = time.monotonic()
        if finished:
            last_progress = seen_at
        elif seen_at - last_progress > settings.settle_s:
            pipeline.workers.check_alive()
            raise measure.Stalled(f"soak: no order completed for {settings.settle_s}s after {done} orders")
        for order_id, notified_at in finished.items():
            histogram.record_value(max(1, int((notified_at - placed.pop(order_id)) * 1e6)))
        done += len(finished)
        part_done += len(finished)
        if done >= per_part * (len(samples) + 1):
            cpu = sum(cpu_seconds(pid) for pid in pids.values())
            redis = _redis_memory(pipeline)
            window = seen_at - part_started
            sample = {
                "orders_done": done,
                "throughput": round(part_done / window, 1),
                "p50_ms": round(histogram.get_value_at_percentile(50) / 1000, 2),
                "p99_ms": round(histogram.get_value_at_percentile(99) / 1000, 2),
                "max_ms": round(histogram.get_max_value() / 1000, 2),
                "worker_cpu_ms_per_order": round(1000 * (cpu - part_cpu) / part_done, 3),
                "worker_rss_mib": {name: round(rss_mib(pid), 1) for name, pid in pids.items()},
                "redis": redis,
                "redis_bytes_per_order": round((redis["used_memory"] - memory_before) / part_done, 1),
                "database_bytes": _database_bytes(settings.store, work, settings.postgres_url),
                "inbox_rows": _inbox_rows(settings.store, work),
                "elapsed_s": round(seen_at - run_started, 1),
            }
            samples.append(sample)
            report(f"soak {done:>7} orders: {sample['throughput']:7.1f}/s, p50 {sample['p50_ms']} p99 "
                   f"{sample['p99_ms']} ms, RSS {max(sample['worker_rss_mib'].values()):.0f} MiB max, Redis "
                   f"{redis['used_memory'] / 2**20:.1f} MiB ({sample['redis_bytes_per_order']:.0f} B/order), "
                   f"{redis['keys']} keys ({redis['expiring_keys']} expiring), event log {redis['event_log']}")
            part_started, part_done, part_cpu, memory_before = seen_at, 0, cpu, redis["used_memory"]
            histogram = HdrHistogram(1, measure.HISTOGRAM_MAX_US, 3)
        time.sleep(settings.poll_interval_s)
    return samples


def verdict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The soak's targets, last tenth against the first: throughput and p99 within 10%, worker RSS growth <= 10%."""
    first, last = samples[0], samples[-1]
    throughput = last["throughput"] / first["throughput"]
    p99 = last["p99_ms"] / first["p99_ms"] if first["p99_ms"] else float("inf")
    growth = {name: round(last["worker_rss_mib"][name] / rss - 1, 3)
              for name, rss in first["worker_rss_mib"].items() if rss}
    return {
        "throughput_last_over_first": round(throughput, 3),
        "p99_last_over_first": round(p99, 3),
        "worker_rss_growth": growth,
        "redis_bytes_per_order": [sample["redis_bytes_per_order"] for sample in samples],
        "throughput_within_10pct": abs(throughput - 1) <= 0.10,
        "p99_within_10pct": abs(p99 - 1) <= 0.10,
        "rss_growth_within_10pct": all(value <= 0.10 for value in growth.values()),
    }
