"""The tables `shop bench` prints from a run's result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_report(console: Console, result: dict[str, Any], quick: bool, out_dir: Path) -> None:
    table = Table(title=f"shop bench ({'quick' if quick else 'full'}, {result['meta']['seconds']}s)")
    for column in ("mode", "orders/s", "runs", "worker CPU ms/order", "redis CPU ms/order", "peak RSS MiB/worker"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    latency = Table(title="placed -> notified, open loop (ms)")
    for column in ("mode", "rate/s", "p50", "p95", "p99", "max", "undone", "noise (cores)"):
        latency.add_column(column, justify="left" if column == "mode" else "right")
    for name, mode in result["modes"].items():
        if "runs" not in mode:
            table.add_row(name, "-", mode.get("skipped", ""), "-", "-", "-")
            continue
        table.add_row(name, f"{mode['throughput']:.1f}", " ".join(f"{run['throughput']:.0f}" for run in mode["runs"]),
                      f"{mode['cpu_ms_per_order']:.2f}", f"{mode['redis_cpu_ms_per_order']:.2f}",
                      f"{max(mode['peak_rss_mib'].values()):.0f}")
        for point in mode["latency"]:
            latency.add_row(name, f"{point['offered_rate']:g}", *(f"{point[key]:g}" for key in (
                "p50_ms", "p95_ms", "p99_ms", "max_ms", "incomplete", "foreign_cpu_share")))
    console.print(table)
    console.print(latency)
    for name, scaling in result.get("scaling", {}).items():
        console.print(f"scaling {name}: 1 payment worker {scaling['1']:.1f}/s, 2 payment workers {scaling['2']:.1f}/s")
    for mode, ratio in result["ratios_over_bare"].items():
        console.print(f"[bold]{mode} / bare throughput: {ratio['median']:.3f}[/] (median of the alternating pairs "
                      f"{ratio['pairs']})")
    if signed := result.get("signatures"):
        share = f", {signed['share_of_worker_cpu']:.1%} of the full-redis worker CPU per order" \
            if "share_of_worker_cpu" in signed else ""
        console.print(f"signatures: Ed25519 sign {signed['ed25519_sign_us']} µs + verify "
                      f"{signed['ed25519_verify_us']} µs per {signed['envelope_bytes']}-byte envelope "
                      f"(HMAC-SHA256: {signed['hmac_sha256_us']} µs); "
                      f"{signed['signed']} signed + {signed['verified']} verified per order = "
                      f"{signed['ed25519_per_order_us']} µs{share}")
    console.print(f"results in {out_dir}")
