"""`shop compare`: the same workload against both wirings, measured, beside the claims usually made for each.

Both modes run as real processes started here: the microservices as separate `shop worker` / `shop api` processes
(not through `shop up`, whose supervisor would restart a worker we mean to keep down), the monolith as `shop
monolith`. Everything is measured from the client's side of the HTTP API and the notification log:

* latency: from the moment a POST is sent to the notification line's `sent_at` (same machine, same clock), recorded
  in an HDR histogram; orders are paced at a light rate so this is latency, not queueing;
* throughput at saturation: a burst from several client threads; orders notified / (last `sent_at` - first POST);
* failure impact: payment is taken down for a window while orders keep coming (microservices: its worker is stopped;
  monolith: a fault switch makes every payment delivery raise a transient error, retried by the bus's retry policy);
* independent scaling: a slow gateway (`SHOP_GATEWAY_DELAY`), a burst through 1 and then 2 payment workers;
* deployment: orders flow at a steady rate while one service (microservices: payment) or the whole process
  (monolith) is restarted; refused POSTs are retried by the client and counted.

"Lost" always means: answered 202 but never notified within the recovery timeout. The machine (cores, load) is
written beside the numbers, because on a small shared machine every number is a property of that machine too.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from hdrh.histogram import HdrHistogram

from events.settings import BusSettings
from shop.embedded_redis import choose_broker, free_port
from shop.seeding import NewProduct, seed_products_over_http
from shop.services import APIS, CONSUMERS
from shop.supervisor import shop_command, stop_process_group

MODES = ("microservices", "monolith")


@dataclass(frozen=True)
class Workload:
    latency_orders: int
    latency_rate: float
    saturation_orders: int
    clients: int
    outage_seconds: float
    outage_rate: float
    deploy_seconds: float
    deploy_rate: float
    scaling_orders: int
    gateway_delay: float
    recovery_timeout: float
    saturation_runs: int = 3
    startup_timeout: float = 90.0


# Sized to finish in a few minutes on 2 cores. The outage window is longer than the default retry budget
# (0.2 s doubling, 4 retries: 3 s), on purpose: that is where a queue and in-process retries differ.
FULL = Workload(
    latency_orders=200, latency_rate=20, saturation_orders=600, clients=8, outage_seconds=5.0, outage_rate=10,
    deploy_seconds=10.0, deploy_rate=10, scaling_orders=120, gateway_delay=0.05, recovery_timeout=60.0,
)
# For tests: every scenario, a fraction of the orders, an outage within the retry budget.
QUICK = Workload(
    latency_orders=20, latency_rate=20, saturation_orders=60, clients=4, outage_seconds=1.5, outage_rate=10,
    deploy_seconds=4.0, deploy_rate=10, scaling_orders=30, gateway_delay=0.05, recovery_timeout=45.0,
    saturation_runs=1,
)

ORDER_BODY = {
    "customer_id": "compare",
    "items": [{"product_id": "book", "quantity": 1}],
    "payment_method": "card",
}
PRODUCTS = [NewProduct("book", "Book", "19.99", 100_000_000)]
"""Enough stock that no scenario ever runs out: the comparison is about the wiring, not the shelf."""


# ---------------------------------------------------------------------------------------------------------------------
# Watching the notification log
# ---------------------------------------------------------------------------------------------------------------------
class NotificationWatcher:
    """Reads the log incrementally: order id -> `sent_at` (epoch seconds), and how many lines each order got."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sent_at: dict[str, float] = {}
        self.lines: dict[str, int] = {}
        self._offset = 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for raw in complete.splitlines():
            try:
                line = json.loads(raw)
                order_id, sent_at = line["order_id"], datetime.fromisoformat(line["sent_at"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            self.sent_at.setdefault(order_id, sent_at)
            self.lines[order_id] = self.lines.get(order_id, 0) + 1

    def wait_for(self, order_ids: Iterable[str], timeout: float) -> bool:
        wanted = set(order_ids)
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if wanted <= self.sent_at.keys():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------------------------
# Placing orders
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Placement:
    order_id: str | None
    first_try: float
    accepted_at: float | None
    refused: int


class Client:
    """POSTs orders; one httpx client per thread (connection reuse, as a real client would)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._local = threading.local()

    def _http(self) -> httpx.Client:
        if not hasattr(self._local, "http"):
            self._local.http = httpx.Client(base_url=self.base_url, timeout=10)
        return self._local.http

    def place(self, retry_refused_for: float = 0.0) -> Placement:
        """One order. A refused or broken connection is retried for `retry_refused_for` seconds (a client riding
        out a restart); each refusal is counted."""
        first_try, refused = time.time(), 0
        deadline = time.monotonic() + retry_refused_for
        while True:
            try:
                response = self._http().post("/orders", json=ORDER_BODY)
                if response.status_code == 202:
                    return Placement(response.json()["id"], first_try, time.time(), refused)
                refused += 1
            except httpx.TransportError:
                refused += 1
                self._local.http = httpx.Client(base_url=self.base_url, timeout=10)
            if time.monotonic() >= deadline:
                return Placement(None, first_try, None, refused)
            time.sleep(0.05)

    def burst(self, count: int, clients: int) -> list[Placement]:
        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(lambda _: self.place(), range(count)))

    def paced(self, rate: float, seconds: float, retry_refused_for: float = 0.0) -> list[Placement]:
        """Orders at a steady `rate` for `seconds` (a clock, not a wait on a condition: this is the workload)."""
        placements: list[Placement] = []
        start = time.monotonic()
        for index in range(int(rate * seconds)):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            placements.append(self.place(retry_refused_for))
        return placements

    def health(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


# ---------------------------------------------------------------------------------------------------------------------
# The two wirings as processes
# ---------------------------------------------------------------------------------------------------------------------
def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


class Deployment(ABC):
    """One running mode: its processes, its port and its notification log."""

    mode: str

    def __init__(self, work_dir: Path, redis_url: str) -> None:
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.notification_log = work_dir / "notifications.log"
        self.notification_log.unlink(missing_ok=True)
        self.port = free_port()
        # The microservices serve each API on a port of its own; the monolith serves them all on the order port.
        self.ports = {service: self.port if service == "order_service" or self.mode == "monolith" else free_port()
                      for service in APIS}
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            **{f"{APIS[service].settings.model_config['env_prefix']}PORT": str(port)
               for service, port in self.ports.items()},
            "SHOP_NOTIFICATION_LOG": str(self.notification_log),
            "SHOP_VAR_DIR": str(work_dir / "var"),
        }
        self.client = Client(f"http://127.0.0.1:{self.port}")
        self.processes: dict[str, list[subprocess.Popen]] = {}

    def spawn(self, name: str, argv: list[str], **extra_env: str) -> None:
        process = _start(argv, {**self.env, **extra_env}, self.work_dir / f"{name}.log")
        self.processes.setdefault(name, []).append(process)

    def stop(self, name: str) -> None:
        for process in self.processes.pop(name, []):
            stop_process_group(process, timeout=30.0)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def wait_until_healthy(self, timeout: float) -> None:
        """Every API answers, and the order service's catalogue has the products (seeded when missing: a restarted
        monolith starts with an empty memory)."""
        deadline = time.monotonic() + timeout
        urls = [f"http://127.0.0.1:{port}" for port in set(self.ports.values())]
        while not all(Client(url).health() for url in urls):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.mode}: the APIs did not answer within {timeout}s (logs in {self.work_dir})")
            time.sleep(0.1)
        seed_products_over_http(f"http://127.0.0.1:{self.ports['product_service']}", self.client.base_url, PRODUCTS,
                                timeout=max(1.0, deadline - time.monotonic()))

    # The scenarios' levers, one per mode.
    @abstractmethod
    def start(self, gateway_delay: float = 0.0) -> None: ...
    @abstractmethod
    def payment_down(self) -> None: ...
    @abstractmethod
    def payment_up(self) -> None: ...
    @abstractmethod
    def redeploy(self) -> str: ...
    @abstractmethod
    def scale_payment(self, workers: int, gateway_delay: float) -> bool: ...


class Microservices(Deployment):
    mode = "microservices"

    def start(self, gateway_delay: float = 0.0) -> None:
        for service, api in APIS.items():
            self.spawn(api.process_name, shop_command("api", service))
        for name in CONSUMERS:
            self.spawn(name, shop_command("worker", name), SHOP_GATEWAY_DELAY=str(gateway_delay))

    def payment_down(self) -> None:
        self.stop("payment_service")

    def payment_up(self) -> None:
        self.spawn("payment_service", shop_command("worker", "payment_service"))

    def redeploy(self) -> str:
        self.stop("payment_service")
        self.payment_up()
        return "payment worker stopped (SIGTERM) and started again"

    def scale_payment(self, workers: int, gateway_delay: float) -> bool:
        self.stop("payment_service")
        for _ in range(workers):
            self.spawn(
                "payment_service", shop_command("worker", "payment_service"), SHOP_GATEWAY_DELAY=str(gateway_delay)
            )
        return True


class Monolith(Deployment):
    mode = "monolith"

    def start(self, gateway_delay: float = 0.0) -> None:
        self.spawn(
            "monolith", shop_command("monolith"), SHOP_FAULT_INJECTION="true", SHOP_GATEWAY_DELAY=str(gateway_delay)
        )

    def _switch_payment(self, down: bool) -> None:
        httpx.put(f"{self.client.base_url}/faults/payment_service", json={"down": down}, timeout=10).raise_for_status()

    def payment_down(self) -> None:
        self._switch_payment(True)

    def payment_up(self) -> None:
        self._switch_payment(False)

    def dead_letters(self) -> int:
        return int(httpx.get(f"{self.client.base_url}/monolith/backlog", timeout=10).json()["dead_letters"])

    def redeploy(self) -> str:
        self.stop("monolith")
        self.start()
        return "whole process stopped (SIGTERM: drains, then exits) and started again"

    def scale_payment(self, workers: int, gateway_delay: float) -> bool:
        """One dispatcher runs every handler; payment cannot get a second worker on its own."""
        if workers != 1:
            return False
        self.stop("monolith")
        self.start(gateway_delay)
        return True


# ---------------------------------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------------------------------
def _latencies_ms(placements: list[Placement], watcher: NotificationWatcher) -> HdrHistogram:
    histogram = HdrHistogram(1, 600_000_000, 3)  # microseconds, up to 10 minutes
    for placement in placements:
        if placement.order_id in watcher.sent_at:
            histogram.record_value(max(1, int((watcher.sent_at[placement.order_id] - placement.first_try) * 1e6)))
    return histogram


def _percentiles(histogram: HdrHistogram) -> dict[str, float | None]:
    if not histogram.get_total_count():
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    values = {f"p{p}_ms": histogram.get_value_at_percentile(p) / 1000 for p in (50, 95, 99)}
    return {**values, "max_ms": histogram.get_max_value() / 1000}


def _accepted(placements: list[Placement]) -> list[str]:
    return [p.order_id for p in placements if p.order_id]


def _throughput(placements: list[Placement], watcher: NotificationWatcher) -> float | None:
    ids = _accepted(placements)
    done = [watcher.sent_at[order_id] for order_id in ids if order_id in watcher.sent_at]
    if not done:
        return None
    elapsed = max(done) - min(p.first_try for p in placements)
    return round(len(done) / elapsed, 1) if elapsed > 0 else None


def _warm_up(deployment: Deployment, watcher: NotificationWatcher, timeout: float) -> None:
    """Until one order goes all the way through, every consumer is known to be running."""
    placement = deployment.client.place(retry_refused_for=timeout)
    if not placement.order_id or not watcher.wait_for([placement.order_id], timeout):
        raise RuntimeError(f"{deployment.mode}: a warm-up order was not notified within {timeout}s")


def measure_latency(deployment: Deployment, watcher: NotificationWatcher, workload: Workload) -> dict[str, Any]:
    placements = deployment.client.paced(workload.latency_rate, workload.latency_orders / workload.latency_rate)
    watcher.wait_for(_accepted(placements), workload.recovery_timeout)
    return {"orders": len(placements), **_percentiles(_latencies_ms(placements, watcher))}


def measure_saturation(deployment: Deployment, watcher: NotificationWatcher, workload: Workload) -> dict[str, Any]:
    """The median of several bursts: one burst on a shared 2-core machine is too noisy to quote alone."""
    runs = []
    for _ in range(workload.saturation_runs):
        placements = deployment.client.burst(workload.saturation_orders, workload.clients)
        watcher.wait_for(_accepted(placements), workload.recovery_timeout)
        runs.append(_throughput(placements, watcher))
    measured = sorted(run for run in runs if run is not None)
    median = measured[len(measured) // 2] if measured else None
    return {"orders": workload.saturation_orders * len(runs), "orders_per_s": median, "runs": runs}


def measure_outage(deployment: Deployment, watcher: NotificationWatcher, workload: Workload) -> dict[str, Any]:
    deployment.payment_down()
    placements = deployment.client.paced(workload.outage_rate, workload.outage_seconds)
    recovery_started = time.time()
    deployment.payment_up()
    accepted = _accepted(placements)
    watcher.wait_for(accepted, workload.recovery_timeout)
    finished = [order_id for order_id in accepted if order_id in watcher.sent_at]
    result = {
        "window_s": workload.outage_seconds,
        "sent": len(placements),
        "accepted": len(accepted),
        "refused": sum(1 for p in placements if not p.order_id),
        "finished": len(finished),
        "lost": len(accepted) - len(finished),
        "recovered_in_s": round(max(watcher.sent_at[o] for o in finished) - recovery_started, 2) if finished else None,
    }
    if isinstance(deployment, Monolith):
        result["dead_letters"] = deployment.dead_letters()
    return result


def measure_deployment(deployment: Deployment, watcher: NotificationWatcher, workload: Workload) -> dict[str, Any]:
    placements: list[Placement] = []
    sender = threading.Thread(
        target=lambda: placements.extend(
            deployment.client.paced(workload.deploy_rate, workload.deploy_seconds, retry_refused_for=60.0)
        )
    )
    sender.start()
    time.sleep(workload.deploy_seconds / 3)  # the restart happens with orders flowing, a third of the way in
    restart_began = time.monotonic()
    what = deployment.redeploy()
    restart_command_s = time.monotonic() - restart_began
    # A restarted monolith has forgotten its catalogue (it lives in memory): stock it again, as its operator would.
    # Until then its API refuses orders (422), and the paced client retries them like refused connections.
    deployment.wait_until_healthy(workload.startup_timeout)
    sender.join(workload.deploy_seconds + 120)
    accepted = _accepted(placements)
    watcher.wait_for(accepted, workload.recovery_timeout)
    notified = [order_id for order_id in accepted if order_id in watcher.sent_at]
    return {
        "restarted": what,
        "restart_command_s": round(restart_command_s, 2),
        "sent": len(placements),
        "refused_attempts": sum(p.refused for p in placements),
        "orders_refused_at_least_once": sum(1 for p in placements if p.refused),
        # One sequential client: while the API refuses, one order keeps retrying; how long it waited is the outage
        # a client sees.
        "refusing_for_s": round(sum(p.accepted_at - p.first_try for p in placements if p.refused and p.accepted_at), 2),
        "never_accepted": len(placements) - len(accepted),
        "lost": len(accepted) - len(notified),
        **_percentiles(_latencies_ms(placements, watcher)),
    }


def measure_scaling(deployment: Deployment, watcher: NotificationWatcher, workload: Workload) -> dict[str, Any]:
    result: dict[str, Any] = {"gateway_delay_s": workload.gateway_delay, "orders": workload.scaling_orders}
    for workers in (1, 2):
        key = f"orders_per_s_{workers}_payment_worker{'s' if workers > 1 else ''}"
        if not deployment.scale_payment(workers, workload.gateway_delay):
            result[key] = None
            continue
        deployment.wait_until_healthy(workload.startup_timeout)
        _warm_up(deployment, watcher, workload.recovery_timeout)
        placements = deployment.client.burst(workload.scaling_orders, workload.clients)
        watcher.wait_for(_accepted(placements), workload.recovery_timeout)
        result[key] = _throughput(placements, watcher)
    return result


SCENARIOS: dict[str, Callable[[Deployment, NotificationWatcher, Workload], dict[str, Any]]] = {
    "latency": measure_latency,
    "saturation": measure_saturation,
    "outage": measure_outage,
    "deployment": measure_deployment,
    "scaling": measure_scaling,  # last: it leaves payment slowed down
}


def run_mode(deployment: Deployment, workload: Workload, report: Callable[[str], None]) -> dict[str, Any]:
    watcher = NotificationWatcher(deployment.notification_log)
    results: dict[str, Any] = {}
    try:
        deployment.start()
        deployment.wait_until_healthy(workload.startup_timeout)
        _warm_up(deployment, watcher, workload.recovery_timeout)
        for name, scenario in SCENARIOS.items():
            started = time.monotonic()
            results[name] = scenario(deployment, watcher, workload)
            report(f"{deployment.mode}: {name} done in {time.monotonic() - started:.1f}s: {results[name]}")
        results["duplicate_notifications"] = sum(count - 1 for count in watcher.lines.values())
    finally:
        deployment.stop_all()
    return results


# ---------------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "cores": os.cpu_count(),
        "load_average_1m_at_start": round(load[0], 2) if load[0] is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def retry_policy(settings: BusSettings) -> dict[str, float]:
    """The policy both buses apply to a transient failure, and how long it rides out an outage before giving up."""
    budget = sum(settings.retry_backoff * 2**attempt for attempt in range(settings.max_retries))
    return {"max_retries": settings.max_retries, "retry_backoff": settings.retry_backoff, "budget_s": round(budget, 2)}


@dataclass
class Row:
    claim: str
    measure: str
    microservices: str
    monolith: str
    how: str


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _value(value: Any) -> str:
    return "n/a" if value is None else str(value)


def rows(results: dict[str, Any], workload: Workload) -> list[Row]:
    micro, mono, retries = results["microservices"], results["monolith"], results["retry_policy"]

    def latency(r: dict[str, Any]) -> str:
        lat = r["latency"]
        return f"{_ms(lat['p50_ms'])} / {_ms(lat['p95_ms'])} / {_ms(lat['p99_ms'])}"

    def outage(r: dict[str, Any]) -> str:
        o = r["outage"]
        text = (f"{o['accepted']} accepted, {o['finished']} finished, {o['lost']} lost; "
                f"recovered in {_value(o['recovered_in_s'])} s")
        return text + (f"; {o['dead_letters']} dead letters" if "dead_letters" in o else "")

    def scaling(r: dict[str, Any]) -> str:
        s = r["scaling"]
        return f"{_value(s['orders_per_s_1_payment_worker'])} -> {_value(s['orders_per_s_2_payment_workers'])}"

    def deployment(r: dict[str, Any]) -> str:
        d = r["deployment"]
        return (
            f"{d['refused_attempts']} refused attempts ({d['refusing_for_s']} s refusing), "
            f"max delay {_ms(d['max_ms'])} ms, {d['lost']} lost"
        )

    return [
        Row(
            "Direct calls are faster", "latency placed -> notified, p50 / p95 / p99 (ms)",
            latency(micro), latency(mono),
            f"{workload.latency_orders} orders paced at {workload.latency_rate:g}/s; POST sent -> log line sent_at; "
            "HDR histogram",
        ),
        Row(
            "Direct calls are faster", "throughput at saturation (orders/s, notified)",
            _value(micro["saturation"]["orders_per_s"]), _value(mono["saturation"]["orders_per_s"]),
            f"median of {workload.saturation_runs} bursts of {workload.saturation_orders} orders from "
            f"{workload.clients} client threads; notified / "
            "(last sent_at - first POST)",
        ),
        Row(
            "Failure is isolated", f"payment down for {workload.outage_seconds:g} s while orders arrive",
            outage(micro), outage(mono),
            f"{workload.outage_rate:g} orders/s during the window; microservices: payment worker stopped, then "
            "started; monolith: fault switch makes payment raise a transient error, retried by the bus policy "
            f"({retries['max_retries']} retries from {retries['retry_backoff']:g} s doubling: "
            f"{retries['budget_s']:g} s budget; its dead letters live in memory, with no replay); "
            f"lost = accepted, never notified within {workload.recovery_timeout:g} s",
        ),
        Row(
            "Services scale independently", "throughput with a slow gateway, 1 -> 2 payment workers (orders/s)",
            scaling(micro), scaling(mono),
            f"SHOP_GATEWAY_DELAY={workload.gateway_delay:g} s per charge; burst of {workload.scaling_orders} "
            "orders per step; the monolith has one dispatcher for every handler, so only the 1-worker value exists",
        ),
        Row(
            "Independent deployment", "restart while orders flow: refused / delayed / lost",
            deployment(micro), deployment(mono),
            f"{workload.deploy_rate:g} orders/s for {workload.deploy_seconds:g} s, restart a third of the way in "
            f"(microservices: {micro['deployment']['restarted']}; monolith: {mono['deployment']['restarted']}); "
            "the client retries refused POSTs; delay from first attempt to notification",
        ),
    ]


def markdown(results: dict[str, Any], table: list[Row]) -> str:
    info = results["machine"]
    lines = [
        "# shop compare: microservices vs monolith",
        "",
        f"Measured {results['finished_at']} on {info['cores']} cores (load {info['load_average_1m_at_start']} at "
        f"start, {info['platform']}, Python {info['python']}); workload `{results['workload_name']}`. "
        "Same handlers, same HTTP API, same notification log; only the wiring differs.",
        "",
        "| Claim | Measure | Microservices | Monolith | How measured |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.claim} | {r.measure} | {r.microservices} | {r.monolith} | {r.how} |" for r in table]
    lines += [
        "",
        f"Duplicate notifications: microservices {results['microservices']['duplicate_notifications']}, "
        f"monolith {results['monolith']['duplicate_notifications']}.",
        "",
    ]
    return "\n".join(lines)


@dataclass
class Comparison:
    results: dict[str, Any]
    table: list[Row] = field(default_factory=list)
    markdown_path: Path | None = None
    json_path: Path | None = None


def compare(out_dir: Path, quick: bool = False, report: Callable[[str], None] = print) -> Comparison:
    workload = QUICK if quick else FULL
    out_dir.mkdir(parents=True, exist_ok=True)
    redis_url, embedded = choose_broker(out_dir / "work")
    results: dict[str, Any] = {
        "workload_name": "quick" if quick else "full",
        "workload": asdict(workload),
        "machine": machine(),
        "retry_policy": retry_policy(BusSettings()),
    }
    try:
        for kind in (Microservices, Monolith):
            results[kind.mode] = run_mode(kind(out_dir / "work" / kind.mode, redis_url), workload, report)
    finally:
        if embedded:
            embedded.stop()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    table = rows(results, workload)
    results["table"] = [asdict(row) for row in table]
    markdown_path, json_path = out_dir / "compare.md", out_dir / "compare.json"
    comparison = Comparison(results, table, markdown_path, json_path)
    markdown_path.write_text(markdown(results, table))
    json_path.write_text(json.dumps(results, indent=2))
    return comparison
