"""bench.png: throughput (each run and the median), latency percentiles per offered load, CPU per order, scaling."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt

COLOURS = {"full-redis": "tab:blue", "full-sqlite": "tab:cyan", "full-postgres": "tab:purple", "bare": "tab:orange",
           "monolith": "tab:green", "monolith-queued": "tab:olive"}


def plot(result: dict, path: Path) -> None:
    modes = {name: mode for name, mode in result["modes"].items() if "runs" in mode}
    figure, ((throughput, latency), (cpu, scaling)) = plt.subplots(2, 2, figsize=(12, 8))
    names = list(modes)

    for index, name in enumerate(names):
        runs = [run["throughput"] for run in modes[name]["runs"]]
        throughput.bar(index, modes[name]["throughput"], color=COLOURS.get(name), alpha=0.6)
        throughput.scatter([index] * len(runs), runs, color="black", s=12, zorder=3)
    throughput.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    throughput.set_ylabel("orders/s (median; dots = runs)")
    ratio = result.get("ratios_over_bare", {}).get("full-redis", {}).get("median", float("nan"))
    throughput.set_title(f"saturation throughput; full-redis/bare = {ratio:.3f}")

    for name in names:
        points = modes[name]["latency"]
        rates = [point["offered_rate"] for point in points]
        for key, style in (("p50_ms", "-o"), ("p99_ms", "--^")):
            latency.plot(rates, [point[key] for point in points], style, color=COLOURS.get(name),
                         label=f"{name} {key[:3]}")
    latency.set_xlabel("offered load (orders/s)")
    latency.set_ylabel("placed -> notified (ms)")
    latency.set_yscale("log")
    latency.legend(fontsize=8)
    latency.set_title("end-to-end latency, open loop")

    parts = ("cpu_ms_per_order", "redis_cpu_ms_per_order", "generator_cpu_ms_per_order")
    bottom = [0.0] * len(names)
    for part in parts:
        values = [modes[name].get(part, 0.0) for name in names]
        cpu.bar(range(len(names)), values, bottom=bottom, label=part.replace("_cpu_ms_per_order", "").replace(
            "cpu_ms_per_order", "workers"))
        bottom = [b + v for b, v in zip(bottom, values, strict=False)]
    cpu.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    cpu.set_ylabel("CPU ms per order")
    cpu.legend(fontsize=8)
    cpu.set_title("CPU per order at saturation")

    table = result.get("scaling", {})
    for offset, workers in ((-0.2, "1"), (0.2, "2")):
        scaling.bar([i + offset for i in range(len(table))], [table[n][workers] for n in table], width=0.4,
                    label=f"{workers} payment worker{'s' if workers == '2' else ''}")
    scaling.set_xticks(range(len(table)), list(table))
    scaling.set_ylabel("orders/s")
    scaling.legend(fontsize=8)
    scaling.set_title("scaling the payment hop")

    figure.suptitle(f"shop bench {result['meta']['started_at']} ({result['meta']['cpus']} CPUs)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
