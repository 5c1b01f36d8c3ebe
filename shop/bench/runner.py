"""One benchmark run: start every pipeline's workers, alternate saturation runs, measure latency at fixed offered
loads, try a second payment worker, and write JSON + PNG.

The workers of every pipeline stay up for the whole run (an idle solo worker sits in a blocking take, which costs next
to nothing and is counted in each run's "foreign" noise figure), so runs can alternate
between the pipelines without paying process start-up each time, and drift of the machine's load hits every
pipeline alike.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shop.bench import measure
from shop.bench.pipelines import (
    PAYMENT,
    BareCelery,
    FullSystem,
    Monolith,
    Pipeline,
    postgres_databases,
)
from shop.bench.procs import WorkerGroup, peak_rss_mib


class BenchSettings(BaseSettings):
    """Knobs of `shop bench` (environment prefix SHOP_BENCH_); `--quick` scales the durations down."""

    model_config = SettingsConfigDict(env_prefix="SHOP_BENCH_", extra="ignore")

    out_dir: Path = Field(Path("var/bench"), description="where bench.json, bench.png and worker logs go")
    runs: int = Field(5, ge=1, description="saturation runs per pipeline, alternating; the headline is their median")
    in_flight: int = Field(64, ge=1, description="orders kept in flight by the closed-loop load generator")
    warmup_s: float = 1.0
    measure_s: float = 6.0
    latency_fractions: tuple[float, ...] = Field(
        (0.25, 0.5, 0.75), description="offered loads, as fractions of each pipeline's own saturation throughput"
    )
    latency_s: float = Field(5.0, description="seconds of sending per offered load, at least")
    latency_orders: int = Field(
        1000, ge=0, description="orders per offered load, at least (a p99 of a few hundred is its third-worst order): "
        "the sending lasts longer at low rates, up to latency_max_s")
    latency_max_s: float = Field(20.0, description="seconds of sending per offered load, at most")
    poll_interval_s: float = Field(
        0.02, description="how often the load generator looks for finished orders (one read of every order in "
        "flight): it frees their places in the closed loop; latency does not depend on it (the pipelines stamp it)",
    )
    settle_s: float = Field(30.0, description="longest wait for in-flight orders before a run is declared stalled")
    scaling: bool = True
    postgres_url: str = Field("postgresql://postgres@127.0.0.1:5432/shop_bench_{service}",
                              description="the full system on PostgreSQL: a database per service (dropped first)")

    @classmethod
    def quick(cls, **overrides: Any) -> BenchSettings:
        base = dict(runs=2, warmup_s=0.3, measure_s=1.0, latency_fractions=(0.5,), latency_s=1.0, latency_orders=0,
                    settle_s=20.0, scaling=False)
        return cls(**{**base, **overrides})

    def latency_duration(self, rate: float) -> float:
        """Seconds of sending at `rate`: `latency_orders` orders, within [latency_s, latency_max_s]."""
        return min(max(self.latency_s, self.latency_orders / rate if rate > 0 else 0.0), self.latency_max_s)


def _env(work: Path) -> dict[str, str]:
    """Children see their own notification log and keys; each pipeline adds its Redis and its stores."""
    return {**os.environ, "SHOP_NOTIFICATION_LOG": str(work / "notifications.log"), "SHOP_LOG_MESSAGES": "false",
            "SHOP_KEYS_DIR": str(work / "keys")}


def fresh_work(work: Path) -> str | None:
    """An empty work directory with throwaway keys of its own (a self-contained run), which this process then signs
    with (it places orders as the order service); returns the SHOP_KEYS_DIR to restore afterwards."""
    from events.adapters.ed25519.keyring import generate
    from shop.services import SERVICES

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    generate(work / "keys", SERVICES)
    previous = os.environ.get("SHOP_KEYS_DIR")
    os.environ["SHOP_KEYS_DIR"] = str(work / "keys")
    return previous


def restore_keys(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("SHOP_KEYS_DIR", None)
    else:
        os.environ["SHOP_KEYS_DIR"] = previous


def _fresh_postgres(template: str) -> str | None:
    """The PostgreSQL databases of `template` ({service} filled in), dropped if they exist, or None (with no server
    answering, the mode is skipped)."""
    from sqlalchemy import create_engine, text

    url, names = postgres_databases(template)
    try:
        admin = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as connection:
            for name in names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure: the mode is reported as skipped, with the reason
        return f"skipped: no PostgreSQL at {url.host}:{url.port} ({exc.__class__.__name__})"
    return None


def run(settings: BenchSettings, rates: list[float] | None = None, report: Callable[[str], None] = print) -> dict:
    """Every pipeline on a private redis-server of its own (same binary, same configuration, nothing on disk), so no
    pipeline's workers take another's messages and each Redis CPU figure belongs to one pipeline."""
    from events.settings import BusSettings
    from shop.redis_server import RedisServer

    started = time.monotonic()
    out = settings.out_dir
    work = (out / "work").resolve()
    previous_keys = fresh_work(work)
    servers: list[RedisServer] = []

    def settings_for(mode: str) -> BusSettings:
        server = RedisServer(work / f"redis-{mode}", persistent=False).start()
        servers.append(server)
        return BusSettings().model_copy(update={"redis_url": server.url, "broker_url": server.url})

    workers = WorkerGroup(_env(work), work / "logs")
    load_before = os.getloadavg()
    result: dict = {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": json.loads(settings.model_dump_json(exclude={"out_dir"})),  # no path of the machine
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
        },
        "modes": {},
        "notes": [],
    }
    pipelines: list[Pipeline] = []
    try:
        stores = {"redis": "redis", "sqlite": f"sqlite:///{work}/db-{{service}}.sqlite3",
                  "postgres": settings.postgres_url}
        for store, url in stores.items():
            skipped = _fresh_postgres(url) if store == "postgres" else None
            if skipped:
                result["modes"][f"full-{store}"] = {"skipped": skipped}
                report(f"full-{store}: {skipped}")
                continue
            pipelines.append(FullSystem(settings_for(f"full-{store}"), workers, store, url))
        pipelines.append(BareCelery(settings_for("bare"), workers))
        for dispatch in ("sync", "queued"):
            mode = "monolith" if dispatch == "sync" else f"monolith-{dispatch}"
            pipelines.append(Monolith(settings_for(mode), workers, dispatch, f"sqlite:///{work}/{mode}.sqlite3"))
        for pipeline in pipelines:
            result["meta"].setdefault("redis", pipeline.redis.info("server").get("redis_version"))
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
            database = [r["database_cpu_ms_per_order"] for r in runs if r["database_cpu_ms_per_order"] is not None]
            mode["database_cpu_ms_per_order"] = round(measure.median(database), 3) if database else None
        bare_runs = [r["throughput"] for r in result["modes"]["bare"]["runs"]]
        result["ratios_over_bare"] = {}
        for pipeline in pipelines:
            if pipeline.mode == "bare":
                continue
            runs = [r["throughput"] for r in result["modes"][pipeline.mode]["runs"]]
            pairs = [mine / bare for mine, bare in zip(runs, bare_runs, strict=True) if bare > 0]
            result["ratios_over_bare"][pipeline.mode] = {
                "median": round(measure.median(pairs), 3), "pairs": [round(r, 3) for r in pairs]}
            report(f"ratio {pipeline.mode} / bare throughput: {measure.median(pairs):.3f} (median of {len(pairs)} "
                   "alternating pairs)")

        from events.adapters.ed25519.keyring import KeyRing
        from shop.bench.signatures import signature_cost

        full = result["modes"].get("full-redis", {})
        result["signatures"] = signed = signature_cost(KeyRing.load(work / "keys"), work, full.get("cpu_ms_per_order"))
        report(f"signatures: Ed25519 sign {signed['ed25519_sign_us']} us, verify {signed['ed25519_verify_us']} us per "
               f"{signed['envelope_bytes']}-byte envelope (HMAC-SHA256 {signed['hmac_sha256_us']} us); per order "
               f"{signed['signed']} signed + {signed['verified']} verified = {signed['ed25519_per_order_us']} us"
               + (f", {signed['share_of_worker_cpu']:.1%} of full-redis worker CPU" if "share_of_worker_cpu" in signed
                  else ""))

        def offered(pipeline: Pipeline) -> list[float]:
            """The given rates, else fractions of the mode's own saturation throughput (half of it = the target's
            "half of saturation", whatever the mode)."""
            own = result["modes"][pipeline.mode]["throughput"]
            return rates or [round(fraction * own, 1) for fraction in settings.latency_fractions]

        for step in range(len(rates or settings.latency_fractions)):
            for pipeline in pipelines:
                rate = offered(pipeline)[step]
                point = measure.latency(pipeline, rate=rate, duration_s=settings.latency_duration(rate),
                                        poll_interval=settings.poll_interval_s, settle_s=settings.settle_s)
                if not rates:
                    point["fraction_of_saturation"] = settings.latency_fractions[step]
                result["modes"][pipeline.mode]["latency"].append(point)
                report(f"latency {pipeline.mode:5} @ {rate:6.1f}/s: p50 {point['p50_ms']} p95 {point['p95_ms']} "
                       f"p99 {point['p99_ms']} max {point['max_ms']} ms ({point['incomplete']} incomplete, "
                       f"noise {point['foreign_cpu_share']:.2f} cores)")

        if not settings.scaling:
            result["notes"].append("scaling table skipped (--quick)")
        else:
            result["scaling"] = {}
            for pipeline in (p for p in pipelines if PAYMENT in p.roles and p.mode in ("full-redis", "bare")):
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
    finally:
        workers.stop_all()
        for pipeline in pipelines:
            pipeline.close()
        for server in servers:
            server.stop()
        restore_keys(previous_keys)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    try:
        from shop.bench.plot import plot

        plot(result, out / "bench.png")
    except ImportError:
        result["notes"].append("no PNG: matplotlib is missing (pip install 'shop[bench]')")
        (out / "bench.json").write_text(json.dumps(result, indent=2))
    return result
