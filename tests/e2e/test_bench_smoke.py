"""`shop bench --quick` end to end: real workers of every pipeline, a JSON with a number for each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.timeout(300)
def test_quick_bench_measures_every_mode_and_the_headline_ratio(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "shop", "bench", "--quick", "--out", str(out)],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=280,
    )
    elapsed = time.monotonic() - started
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    result = json.loads((out / "bench.json").read_text())
    measured = {name: mode for name, mode in result["modes"].items() if "skipped" not in mode}
    assert {"full-redis", "full-sqlite", "bare", "monolith", "monolith-queued"} <= set(measured)
    for name, mode in measured.items():
        assert mode["throughput"] > 0, name
        assert mode["cpu_ms_per_order"] > 0, name
        assert all(point["completed"] > 0 for point in mode["latency"]), name
        # each pipeline stamps the moment an order is notified, before the load generator's poll can see it done
        assert all(0 < point["p50_ms"] <= point["p50_polled_ms"] for point in mode["latency"]), (name, mode["latency"])
    # The database server's own CPU is counted where it is a server of its own (PostgreSQL); SQLite's is the workers'.
    assert measured["full-sqlite"]["database_cpu_ms_per_order"] is None
    if "full-postgres" in measured:
        assert measured["full-postgres"]["database_cpu_ms_per_order"] > 0
    for name in measured.keys() - {"bare"}:
        assert result["ratios_over_bare"][name]["median"] > 0, name
    signed = result["signatures"]
    assert signed["signed"] >= 4 and signed["verified"] >= signed["signed"], signed
    assert signed["ed25519_sign_us"] > 0 and signed["ed25519_verify_us"] > 0 and signed["hmac_sha256_us"] > 0
    assert 0 < signed["share_of_worker_cpu"] < 1
    assert (out / "bench.png").stat().st_size > 0
    print(f"quick bench took {elapsed:.1f}s; ratios over bare: {result['ratios_over_bare']}")


@pytest.mark.timeout(240)
def test_a_short_soak_samples_every_tenth_and_its_bounds_apply(redis_url: str, tmp_path: Path) -> None:
    """The CI form of `shop bench --soak`: 800 orders, with bounds small enough to apply within the run (inbox marks
    kept 2 s, an event log of 500 entries): what would grow with the data must not."""
    out = tmp_path / "soak"
    completed = subprocess.run(
        [sys.executable, "-m", "shop", "bench", "--soak", "800", "--out", str(out)],
        env={**os.environ, "REDIS_URL": redis_url, "SHOP_SOAK_WARMUP_ORDERS": "100", "SHOP_SOAK_INBOX_TTL": "2",
             "SHOP_SOAK_REDELIVER_AFTER": "1", "SHOP_SOAK_EVENT_LOG_LENGTH": "500"},
        capture_output=True, text=True, timeout=220,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads((out / "soak.json").read_text())
    samples = result["samples"]
    assert [sample["orders_done"] for sample in samples] == sorted(sample["orders_done"] for sample in samples)
    assert len(samples) == 10 and samples[-1]["orders_done"] >= 800
    assert all(sample["throughput"] > 0 and sample["p99_ms"] >= sample["p50_ms"] > 0 for sample in samples)
    assert all(min(sample["worker_rss_mib"].values()) > 0 for sample in samples)
    # ~5 events per order: 4000 were logged, the stream keeps about 500 (MAXLEN ~ trims whole nodes of 100)
    assert all(sample["redis"]["event_log"] <= 700 for sample in samples), [s["redis"]["event_log"] for s in samples]
    # every delivery handled leaves an inbox mark: 6 per order (product; payment and the order catalogue; order;
    # notification; order), 5400 with the warm-up's. Without the TTL they would all still be there; with a 2 s TTL
    # only the marks of about the last 2 s are, plus expired ones Redis has not reclaimed yet (give it 3 s more): a
    # bound set by the rate, not by the number of orders.
    last = samples[-1]
    marks_at_end = last["redis"]["expiring_keys"]
    created = 6 * (last["orders_done"] + 100)
    assert marks_at_end < min(created, 6 * last["throughput"] * (2 + 3)), (marks_at_end, last["throughput"])
    assert set(result["verdict"]) >= {"throughput_last_over_first", "p99_last_over_first", "worker_rss_growth"}
    assert (out / "soak.png").stat().st_size > 0
    print(f"soak: {[sample['throughput'] for sample in samples]} orders/s per tenth, verdict {result['verdict']}")
