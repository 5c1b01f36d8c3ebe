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
        rates = [100 * point.get("fraction_of_saturation", 0) or point["offered_rate"] for point in points]
        for key, style in (("p50_ms", "-o"), ("p99_ms", "--^")):
            latency.plot(rates, [point[key] for point in points], style, color=COLOURS.get(name),
                         label=f"{name} {key[:3]}")
    latency.set_xlabel("offered load (% of the mode's own saturation; orders/s when given)")
    latency.set_ylabel("placed -> notified (ms)")
    latency.set_yscale("log")
    latency.legend(fontsize=8)
    latency.set_title("end-to-end latency, open loop")

    parts = ("cpu_ms_per_order", "redis_cpu_ms_per_order", "database_cpu_ms_per_order", "generator_cpu_ms_per_order")
    bottom = [0.0] * len(names)
    for part in parts:
        values = [modes[name].get(part) or 0.0 for name in names]
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


def plot_soak(result: dict, path: Path) -> None:
    """soak.png: per tenth of the run, throughput, latency, worker memory and what Redis / the databases hold."""
    samples = result["samples"]
    done = [sample["orders_done"] for sample in samples]
    figure, ((throughput, latency), (rss, memory)) = plt.subplots(2, 2, figsize=(12, 8))

    throughput.plot(done, [sample["throughput"] for sample in samples], "-o")
    throughput.set_ylabel("orders/s in this tenth")
    throughput.set_ylim(bottom=0)
    throughput.set_title("throughput (closed loop)")

    for key, style in (("p50_ms", "-o"), ("p99_ms", "--^")):
        latency.plot(done, [sample[key] for sample in samples], style, label=key[:3])
    latency.set_ylabel("placed -> notified (ms)")
    latency.set_ylim(bottom=0)
    latency.legend(fontsize=8)
    latency.set_title("latency per tenth")

    for name in samples[0]["worker_rss_mib"]:
        rss.plot(done, [sample["worker_rss_mib"][name] for sample in samples], "-o", label=name.split(".")[1])
    rss.set_ylabel("worker RSS (MiB)")
    rss.set_ylim(bottom=0)
    rss.legend(fontsize=8)
    rss.set_title("worker memory")

    memory.plot(done, [sample["redis"]["used_memory"] / 2**20 for sample in samples], "-o", label="Redis used_memory")
    if samples[0].get("database_bytes") is not None:
        memory.plot(done, [sample["database_bytes"] / 2**20 for sample in samples], "-s", label="databases on disk")
    memory.set_ylabel("MiB")
    memory.legend(fontsize=8)
    memory.set_title("what the stores hold")

    for axes in (throughput, latency, rss, memory):
        axes.set_xlabel("orders done")
    settings = result["meta"]["settings"]
    figure.suptitle(f"shop bench --soak {settings['orders']} on {settings['store']} stores, "
                    f"{result['meta']['started_at']} ({result['meta']['cpus']} CPUs)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
