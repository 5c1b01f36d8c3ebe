"""One benchmark run: start both pipelines' workers, alternate saturation runs, measure latency at fixed offered
loads, try a second payment worker, and write JSON + PNG.

The workers of every pipeline stay up for the whole run (an idle solo worker sits in a blocking BRPOP: measured at
about 1 ms of CPU per second, and counted in each run's "foreign" noise figure), so runs can alternate
full / bare / monolith without paying process start-up each time, and drift of the machine's load hits every
pipeline alike.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shop.bench import measure
from shop.bench.pipelines import (
    PAYMENT,
    BareCelery,
    FullSystem,
    Monolith,
    Pipeline,
    monolith_available,
)
from shop.bench.procs import WorkerGroup, peak_rss_mib

SENTINEL = "bench:sentinel"
"""Set when the run starts: if it is gone when orders stop completing, someone else flushed the database."""


class BenchSettings(BaseSettings):
    """Knobs of `shop bench` (environment prefix SHOP_BENCH_); `--quick` scales the durations down."""

    model_config = SettingsConfigDict(env_prefix="SHOP_BENCH_", extra="ignore")

    out_dir: Path = Field(Path("var/bench"), description="where bench.json, bench.png and worker logs go")
    runs: int = Field(5, ge=1, description="saturation runs per pipeline, alternating; the headline is their median")
    in_flight: int = Field(64, ge=1, description="orders kept in flight by the closed-loop load generator")
    warmup_s: float = 1.0
    measure_s: float = 6.0
    latency_fractions: tuple[float, ...] = Field(
        (0.25, 0.5, 0.75), description="offered loads, as fractions of the slowest pipeline's saturation throughput"
    )
    latency_s: float = Field(5.0, description="seconds of sending per offered load")
    poll_interval_s: float = Field(0.005, description="completion polling period: the latency resolution")
    settle_s: float = Field(30.0, description="longest wait for in-flight orders before a run is declared stalled")
    scaling: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> BenchSettings:
        base = dict(runs=3, warmup_s=0.5, measure_s=1.5, latency_fractions=(0.5,), latency_s=1.5, settle_s=20.0,
                    scaling=False)
        return cls(**{**base, **overrides})


@dataclass(frozen=True)
class Target:
    redis_url: str

    def check(self) -> None:
        """The benchmark empties its database before and after: never let it be the demo's database 0."""
        parsed = urlparse(self.redis_url)
        database = (parsed.path or "/0").lstrip("/") or "0"
        if database == "0":
            raise ValueError(
                f"REDIS_URL={self.redis_url} names database 0; `shop bench` flushes its database, so point REDIS_URL "
                "at a spare one (e.g. redis://127.0.0.1:6379/15)"
            )


def _env(redis_url: str, work: Path) -> dict[str, str]:
    """Children see the same Redis and their own notification log."""
    return {**os.environ, "REDIS_URL": redis_url, "SHOP_NOTIFICATION_LOG": str(work / "notifications.log")}


def run(
    settings: BenchSettings, redis_url: str, rates: list[float] | None = None, report: Callable[[str], None] = print
) -> dict:
    target = Target(redis_url)
    target.check()
    started = time.monotonic()
    out = settings.out_dir
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "notifications.log").unlink(missing_ok=True)
    os.environ["REDIS_URL"] = redis_url  # this process's BusSettings, like the workers'
    from events.settings import BusSettings

    bus = BusSettings()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.set(SENTINEL, "1")
    workers = WorkerGroup(_env(redis_url, work), work / "logs")
    load_before = os.getloadavg()
    result: dict = {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": json.loads(settings.model_dump_json()),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "redis": client.info("server").get("redis_version"),
            "loadavg_before": load_before,
        },
        "modes": {},
        "notes": [],
    }
    try:
        pipelines: list[Pipeline] = [FullSystem(bus, workers), BareCelery(bus, workers)]
        available, why = monolith_available()
        if available:
            pipelines.append(Monolith(bus, workers))
        else:
            result["modes"]["monolith"] = {"skipped": why}
            report(f"monolith: {why}")
        for pipeline in pipelines:
            pipeline.start()
        for pipeline in pipelines:
            seconds = measure.warm_up(pipeline, 20, timeout=60)
            report(f"{pipeline.mode}: workers up and warm ({seconds:.1f}s)")
            result["modes"][pipeline.mode] = {"description": pipeline.description, "workers": len(pipeline.roles),
                                              "runs": [], "latency": []}

        def saturate(pipeline: Pipeline) -> measure.SaturationResult:
            return measure.saturation(
                pipeline, in_flight=settings.in_flight, warmup_s=settings.warmup_s, measure_s=settings.measure_s,
                poll_interval=settings.poll_interval_s, settle_s=settings.settle_s,
            )

        for index in range(settings.runs):
            for pipeline in pipelines if index % 2 == 0 else pipelines[::-1]:
                outcome = saturate(pipeline)
                result["modes"][pipeline.mode]["runs"].append(outcome.as_dict())
                report(f"run {index + 1}/{settings.runs} {pipeline.mode:5}: {outcome.throughput:7.1f} orders/s, "
                       f"{outcome.cpu_ms_per_order:.2f} worker-CPU ms/order, "
                       f"noise {outcome.foreign_cpu_share:.2f} cores")
        for pipeline in pipelines:
            mode = result["modes"][pipeline.mode]
            runs = mode["runs"]
            mode["throughput"] = round(measure.median([r["throughput"] for r in runs]), 1)
            mode["cpu_ms_per_order"] = round(measure.median([r["cpu_ms_per_order"] for r in runs]), 3)
            mode["generator_cpu_ms_per_order"] = round(
                measure.median([r["generator_cpu_ms_per_order"] for r in runs]), 3)
            mode["redis_cpu_ms_per_order"] = round(measure.median([r["redis_cpu_ms_per_order"] for r in runs]), 3)
        full_runs = [r["throughput"] for r in result["modes"]["full"]["runs"]]
        bare_runs = [r["throughput"] for r in result["modes"]["bare"]["runs"]]
        pair_ratios = [f / b for f, b in zip(full_runs, bare_runs, strict=False) if b > 0]
        result["ratio_full_over_bare"] = round(measure.median(pair_ratios), 3)
        result["ratio_runs"] = [round(r, 3) for r in pair_ratios]
        result["ratio_of_medians"] = round(
            result["modes"]["full"]["throughput"] / result["modes"]["bare"]["throughput"], 3)
        if "runs" in result["modes"].get("monolith", {}):
            mono_runs = [r["throughput"] for r in result["modes"]["monolith"]["runs"]]
            result["ratio_monolith_over_bare"] = round(
                measure.median([m / b for m, b in zip(mono_runs, bare_runs, strict=False)]), 3)
        report(f"ratio full / bare throughput: {result['ratio_full_over_bare']:.3f} "
               f"(median of {len(pair_ratios)} pairs)")

        slowest = min(result["modes"][p.mode]["throughput"] for p in pipelines)
        offered = rates or [round(fraction * slowest, 1) for fraction in settings.latency_fractions]
        for rate in offered:
            for pipeline in pipelines:
                point = measure.latency(pipeline, rate=rate, duration_s=settings.latency_s,
                                        poll_interval=settings.poll_interval_s, settle_s=settings.settle_s)
                result["modes"][pipeline.mode]["latency"].append(point)
                report(f"latency {pipeline.mode:5} @ {rate:6.1f}/s: p50 {point['p50_ms']} p95 {point['p95_ms']} "
                       f"p99 {point['p99_ms']} max {point['max_ms']} ms ({point['incomplete']} incomplete, "
                       f"noise {point['foreign_cpu_share']:.2f} cores)")

        if not settings.scaling:
            result["notes"].append("scaling table skipped (--quick)")
        else:
            result["scaling"] = {}
            for pipeline in (p for p in pipelines if PAYMENT in p.roles):
                extra = pipeline.add_worker(PAYMENT)
                measure.warm_up(pipeline, 20, timeout=60)
                two = saturate(pipeline)
                result["scaling"][pipeline.mode] = {
                    "1": result["modes"][pipeline.mode]["throughput"], "2": round(two.throughput, 1),
                    "2_worker_cpu_share": two.worker_cpu_share,
                }
                report(f"scaling {pipeline.mode:5}: 1 payment worker {result['scaling'][pipeline.mode]['1']:.1f}/s, "
                       f"2 payment workers {two.throughput:.1f}/s")
                pipeline.remove_worker(extra)
            result["notes"].append(
                "scaling: a second payment worker only helps when payment is the bottleneck; with an instant gateway "
                "it is not (see worker_cpu_share), and on a 2-core machine a 4th busy process competes for the same "
                "CPUs. SHOP_GATEWAY_DELAY makes the payment hop slow, to study the other case."
            )

        for pipeline in pipelines:
            mode = result["modes"][pipeline.mode]
            mode["peak_rss_mib"] = {name: round(peak_rss_mib(pid), 1) for name, pid in pipeline.pids().items()}
        workers.check_alive()
        result["meta"]["loadavg_after"] = os.getloadavg()
        result["meta"]["seconds"] = round(time.monotonic() - started, 1)
        result["notes"].append(
            "2 cores shared with other tenants: compare the modes within this run (ratio), not across machines; "
            "each run's foreign_cpu_share says how much CPU others took during it."
        )
    except measure.Stalled as exc:
        if not client.exists(SENTINEL):
            raise measure.Stalled(f"{exc}; the benchmark's database was flushed by another client during the run: "
                                  "give the benchmark a database of its own") from None
        raise
    finally:
        workers.stop_all()
        client.flushdb()
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    try:
        from shop.bench.plot import plot

        plot(result, out / "bench.png")
    except ImportError:
        result["notes"].append("no PNG: matplotlib is missing (pip install 'shop[bench]')")
        (out / "bench.json").write_text(json.dumps(result, indent=2))
    return result
