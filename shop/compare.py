"""`shop compare`: the same workload against both architectures, measured, beside the claims usually made for each.

Both sides are equally real: durable, on databases. The microservices run as separate `shop worker` / `shop api`
processes (not through `shop up`, whose supervisor would restart a worker we mean to keep down), each service on its
own SQLite file; the monolith runs as `shop monolith` on its one SQLite file, with its default dispatch (direct calls,
one transaction). Everything is measured from the client's side of the HTTP API and
the notification log:

* latency: from the moment a POST is sent to the notification line's `sent_at` (same machine, same clock), in an HDR
  histogram; orders are paced at a light rate so this is latency, not queueing;
* throughput at saturation: bursts from several client threads; orders notified / (last `sent_at` - first POST);
* consistency: after each POST answered, a reader polls the order and its product: how long until it sees the final
  state, and how often it sees an in-between one (the stock taken, the order still PENDING);
* failure isolation: payment is down for a window while orders keep coming (microservices: its worker is stopped;
  monolith: its deliveries wait, the monolith's stand-in for stopping one part);
* data ownership: a database unavailable for a window (microservices: the payment service's; monolith: its only one),
  held under an exclusive lock, as a stalled disk or a database restart would;
* scaling the seed's way: with a slow gateway, 1 -> 2 payment workers beside 1 -> 2 whole monolith processes on the
  same database (the client spreads its orders over both), with the resident memory each extra order/s costs;
* deployment: orders flow at a steady rate while one service (microservices: payment) or the whole process (monolith)
  is restarted; refused POSTs are retried by the client and counted.

"Lost" always means: answered 2xx but never notified within the recovery timeout. The machine (cores, load) is
written beside the numbers, because on a small shared machine every number is a property of that machine too.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import sqlite3
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

from events.adapters.ed25519.keyring import generate
from events.settings import BusSettings
from shop.bench.procs import rss_mib
from shop.client import bearer, register, sign_in
from shop.embedded_redis import choose_broker, free_port
from shop.seeding import NewProduct, seed_products_over_http
from shop.services import APIS, CONSUMERS, SERVICES
from shop.supervisor import shop_command, stop_process_group

MODES = ("microservices", "monolith")


@dataclass(frozen=True)
class Workload:
    latency_orders: int
    latency_rate: float
    saturation_orders: int
    clients: int
    consistency_orders: int
    outage_seconds: float
    outage_rate: float
    database_outage_seconds: float
    deploy_seconds: float
    deploy_rate: float
    scaling_orders: int
    gateway_delay: float
    recovery_timeout: float
    saturation_runs: int = 3
    startup_timeout: float = 90.0


# Sized to finish in a few minutes on 2 cores.
FULL = Workload(
    latency_orders=200, latency_rate=20, saturation_orders=600, clients=8, consistency_orders=40, outage_seconds=5.0,
    outage_rate=10, database_outage_seconds=5.0, deploy_seconds=10.0, deploy_rate=10, scaling_orders=120,
    gateway_delay=0.05, recovery_timeout=60.0,
)
# For tests: every scenario, a fraction of the orders.
QUICK = Workload(
    latency_orders=20, latency_rate=20, saturation_orders=60, clients=4, consistency_orders=8, outage_seconds=1.5,
    outage_rate=10, database_outage_seconds=1.5, deploy_seconds=4.0, deploy_rate=10, scaling_orders=30,
    gateway_delay=0.05, recovery_timeout=45.0, saturation_runs=1,
)

ORDER_BODY = {
    "customer_id": "compare",
    "items": [{"product_id": "book", "quantity": 1}],
    "payment_method": "card",
}
PRODUCTS = [NewProduct("book", "Book", "19.99", 100_000_000)]
"""Enough stock that no scenario ever runs out: the comparison is about the wiring, not the shelf."""
ADMIN = ("admin@compare.example", "compare-admin-password")
CUSTOMER = ("client@compare.example", "compare-client-password")
"""Throwaway accounts of a throwaway experiment (its own databases and keys)."""
PROBE_STOCK = 10
"""Each consistency probe buys one of its own product (stock 10): a reader sees 10 before, 9 once reserved."""
ACCEPTED = (201, 202)


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
    body: dict[str, Any] = field(default_factory=dict)


class Client:
    """POSTs orders, spread over one or more base URLs; one httpx client per thread and URL (connection reuse, as a
    real client would)."""

    def __init__(self, *base_urls: str) -> None:
        self.base_urls = list(base_urls)
        self._next = itertools.cycle(range(len(self.base_urls)))
        self._lock = threading.Lock()
        self._local = threading.local()
        self.token, self.customer = "", "compare"
        """the customer this client orders as (signed in once the APIs answer)"""

    @property
    def base_url(self) -> str:
        return self.base_urls[0]

    def spread_over(self, *base_urls: str) -> None:
        with self._lock:
            self.base_urls = list(base_urls)
            self._next = itertools.cycle(range(len(self.base_urls)))
        self._local = threading.local()

    def _http(self, base_url: str) -> httpx.Client:
        clients: dict[str, httpx.Client] = self._local.__dict__.setdefault("clients", {})
        if base_url not in clients:
            clients[base_url] = httpx.Client(base_url=base_url, timeout=30, headers=bearer(self.token))
        return clients[base_url]

    def place(self, retry_refused_for: float = 0.0, body: dict[str, Any] | None = None) -> Placement:
        """One order. A refused or broken connection is retried for `retry_refused_for` seconds (a client riding
        out a restart); each refusal is counted."""
        body = {**(body or ORDER_BODY), "customer_id": self.customer}
        first_try, refused = time.time(), 0
        deadline = time.monotonic() + retry_refused_for
        while True:
            with self._lock:
                base_url = self.base_urls[next(self._next)]
            try:
                response = self._http(base_url).post("/orders", json=body)
                if response.status_code in ACCEPTED:
                    return Placement(response.json()["id"], first_try, time.time(), refused, response.json())
                refused += 1
            except httpx.TransportError:
                refused += 1
                self._local.__dict__.get("clients", {}).pop(base_url, None)
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

    def get(self, path: str) -> dict[str, Any]:
        return dict(self._http(self.base_url).get(path).json())


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------------------------------------------------
# The two architectures as processes
# ---------------------------------------------------------------------------------------------------------------------
def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


class DatabaseLock:
    """A SQLite database held under an exclusive lock: writers wait (up to their busy timeout) until it is let go."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def hold(self) -> None:
        self._connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self._connection is not None:
            self._connection.execute("ROLLBACK")
            self._connection.close()
            self._connection = None


class Deployment(ABC):
    """One running architecture: its processes, its ports and its notification log."""

    mode: str

    def __init__(self, work_dir: Path, redis_url: str) -> None:
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.notification_log = work_dir / "notifications.log"
        self.notification_log.unlink(missing_ok=True)
        self.var_dir = work_dir / "var"
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
            "SHOP_VAR_DIR": str(self.var_dir),
            "SHOP_KEYS_DIR": str(work_dir / "keys"),
            "SHOP_ADMIN_EMAIL": ADMIN[0],
            "SHOP_ADMIN_PASSWORD": ADMIN[1],
            "SHOP_DATABASE_URL": f"sqlite:///{self.var_dir}/db/{{service}}.sqlite3",
            "SHOP_MONOLITH_DATABASE_URL": f"sqlite:///{self.var_dir}/db/monolith.sqlite3",
        }
        self.env.pop("SHOP_MONOLITH_DISPATCH", None)
        generate(work_dir / "keys", SERVICES)  # a self-contained experiment: throwaway keys of its own
        self.client = Client(f"http://127.0.0.1:{self.port}")
        self.admin_token = ""
        self.processes: dict[str, list[subprocess.Popen[bytes]]] = {}

    def spawn(self, name: str, argv: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
        process = _start(argv, {**self.env, **extra_env}, self.work_dir / f"{name}.log")
        self.processes.setdefault(name, []).append(process)
        return process

    def stop(self, name: str) -> None:
        for process in self.processes.pop(name, []):
            stop_process_group(process, timeout=30.0)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def wait_until_healthy(self, timeout: float, *base_urls: str) -> None:
        """Every API answers, and the order service's catalogue has the products (seeded when missing)."""
        deadline = time.monotonic() + timeout
        urls = list(base_urls) or [f"http://127.0.0.1:{port}" for port in set(self.ports.values())]
        while not all(healthy(url) for url in urls):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.mode}: the APIs did not answer within {timeout}s (logs in {self.work_dir})")
            time.sleep(0.1)
        self.admin_token, _ = sign_in(self.user_url, *ADMIN)
        register(self.user_url, "Compare Client", CUSTOMER[0], CUSTOMER[1])
        self.client.token, self.client.customer = sign_in(self.user_url, *CUSTOMER)
        self.client.spread_over(*self.client.base_urls)  # new connections, with the token
        seed_products_over_http(self.product_url, self.client.base_url, PRODUCTS, self.admin_token,
                                timeout=max(1.0, deadline - time.monotonic()))

    @property
    def product_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['product_service']}"

    @property
    def user_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['user_service']}"

    # The scenarios' levers, one per architecture.
    @abstractmethod
    def start(self, gateway_delay: float = 0.0) -> None: ...

    @abstractmethod
    def payment_down(self) -> None: ...

    @abstractmethod
    def payment_up(self) -> None: ...

    @abstractmethod
    def database(self) -> DatabaseLock: ...

    @abstractmethod
    def redeploy(self) -> str: ...

    @abstractmethod
    def scale(self, units: int, gateway_delay: float) -> tuple[str, list[subprocess.Popen[bytes]]]:
        """Run with `units` of what scales (payment workers; whole monoliths); returns what was done and the
        processes added by the last unit."""


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

    def database(self) -> DatabaseLock:
        """The payment service's own database (the store of the service whose outage is compared)."""
        return DatabaseLock(self.var_dir / "db" / "payment_service.sqlite3")

    def redeploy(self) -> str:
        self.stop("payment_service")
        self.payment_up()
        return "payment worker stopped (SIGTERM) and started again"

    def scale(self, units: int, gateway_delay: float) -> tuple[str, list[subprocess.Popen[bytes]]]:
        self.stop("payment_service")
        added = [self.spawn("payment_service", shop_command("worker", "payment_service"),
                            SHOP_GATEWAY_DELAY=str(gateway_delay)) for _ in range(units)]
        return f"{units} payment worker(s)", added[-1:]


class Monolith(Deployment):
    mode = "monolith"

    def __init__(self, work_dir: Path, redis_url: str) -> None:
        super().__init__(work_dir, redis_url)
        self.env["SHOP_FAULT_INJECTION"] = "true"

    def start(self, gateway_delay: float = 0.0) -> None:
        self.spawn("monolith", shop_command("monolith"), SHOP_GATEWAY_DELAY=str(gateway_delay))

    def _switch_payment(self, down: bool) -> None:
        httpx.put(f"{self.client.base_url}/faults/payment_service", json={"down": down}, timeout=10).raise_for_status()

    def payment_down(self) -> None:
        self._switch_payment(True)

    def payment_up(self) -> None:
        self._switch_payment(False)

    def database(self) -> DatabaseLock:
        return DatabaseLock(self.var_dir / "db" / "monolith.sqlite3")

    def dead_letters(self) -> int:
        return int(httpx.get(f"{self.client.base_url}/monolith/backlog", timeout=10).json()["dead_letters"])

    def redeploy(self) -> str:
        self.stop("monolith")
        self.start()
        return "whole process stopped (SIGTERM: finishes what is due, then exits) and started again"

    def scale(self, units: int, gateway_delay: float) -> tuple[str, list[subprocess.Popen[bytes]]]:
        """The seed's way: the whole application, `units` times, on one database; the client spreads its orders."""
        self.stop("monolith")
        ports = [self.port, *(free_port() for _ in range(units - 1))]
        added = [self.spawn("monolith", shop_command("monolith"), SHOP_GATEWAY_DELAY=str(gateway_delay),
                            SHOP_ORDER_API_PORT=str(port)) for port in ports]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        self.wait_until_healthy(90.0, *urls)
        self.client.spread_over(*urls)
        return f"{units} monolith process(es) on one database", added[-1:]


# ---------------------------------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------------------------------
def _histogram(values_ms: Iterable[float]) -> HdrHistogram:
    histogram = HdrHistogram(1, 600_000_000, 3)  # microseconds, up to 10 minutes
    for value in values_ms:
        histogram.record_value(max(1, int(value * 1000)))
    return histogram


def _latencies_ms(placements: list[Placement], watcher: NotificationWatcher) -> HdrHistogram:
    return _histogram((watcher.sent_at[p.order_id] - p.first_try) * 1000
                      for p in placements if p.order_id in watcher.sent_at)


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


def measure_consistency(deployment: Deployment, watcher: NotificationWatcher, workload: Workload) -> dict[str, Any]:
    """Each probe orders one unit of a product of its own, then reads the order and the product as fast as one reader
    can, until the order is final: how long after the answer the final state shows, and whether any read saw the
    stock taken while the order was still PENDING (an in-between state no single transaction would show)."""
    run = datetime.now(UTC).strftime("%H%M%S%f")
    probes = [NewProduct(f"probe-{run}-{n}", f"Probe {n}", "1.00", PROBE_STOCK)
              for n in range(workload.consistency_orders)]
    seed_products_over_http(deployment.product_url, deployment.client.base_url, probes, deployment.admin_token,
                            timeout=workload.recovery_timeout)
    to_final_ms: list[float] = []
    reads = in_between_reads = orders_seen_in_between = 0
    with httpx.Client(timeout=10, headers=bearer(deployment.client.token)) as http:
        for probe in probes:
            body = {**ORDER_BODY, "items": [{"product_id": probe.id, "quantity": 1}]}
            placement = deployment.client.place(body=body)
            if placement.order_id is None or placement.accepted_at is None:
                continue
            seen_in_between, status = False, placement.body.get("status")
            final_when_answered = status != "PENDING"
            deadline = time.monotonic() + workload.recovery_timeout
            while status == "PENDING" and time.monotonic() < deadline:
                status = http.get(f"{deployment.client.base_url}/orders/{placement.order_id}").json()["status"]
                stock = http.get(f"{deployment.product_url}/products/{probe.id}").json()["stock"]
                reads += 1
                if status == "PENDING" and stock < PROBE_STOCK:
                    in_between_reads += 1
                    seen_in_between = True
            to_final_ms.append(0.0 if final_when_answered else (time.time() - placement.accepted_at) * 1000)
            orders_seen_in_between += seen_in_between
    histogram = _histogram(to_final_ms)
    return {
        "orders": len(probes),
        "final_at_answer": sum(1 for value in to_final_ms if value == 0.0),
        "to_final_p50_ms": round(histogram.get_value_at_percentile(50) / 1000, 1) if to_final_ms else None,
        "to_final_p99_ms": round(histogram.get_value_at_percentile(99) / 1000, 1) if to_final_ms else None,
        "reads": reads,
        "in_between_reads": in_between_reads,
        "orders_seen_in_between": orders_seen_in_between,
    }


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


def measure_database_outage(
    deployment: Deployment, watcher: NotificationWatcher, workload: Workload
) -> dict[str, Any]:
    """Orders keep coming while a database is held locked for the window; the client waits for each answer."""
    lock = deployment.database()
    lock.hold()
    placements: list[Placement] = []
    sender = threading.Thread(target=lambda: placements.extend(
        deployment.client.paced(workload.outage_rate, workload.database_outage_seconds)))
    sender.start()
    time.sleep(workload.database_outage_seconds)  # the window itself: a clock, as the workload is
    released_at = time.time()
    lock.release()
    sender.join(workload.recovery_timeout)
    accepted = _accepted(placements)
    watcher.wait_for(accepted, workload.recovery_timeout)
    finished = [order_id for order_id in accepted if order_id in watcher.sent_at]
    answers = _histogram((p.accepted_at - p.first_try) * 1000 for p in placements if p.accepted_at)
    return {
        "window_s": workload.database_outage_seconds,
        "sent": len(placements),
        "accepted": len(accepted),
        "longest_answer_ms": round(answers.get_max_value() / 1000, 1) if answers.get_total_count() else None,
        "finished": len(finished),
        "lost": len(accepted) - len(finished),
        "recovered_in_s": round(max(watcher.sent_at[o] for o in finished) - released_at, 2) if finished else None,
    }


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
    for units in (1, 2):
        what, added = deployment.scale(units, workload.gateway_delay)
        deployment.wait_until_healthy(workload.startup_timeout)
        _warm_up(deployment, watcher, workload.recovery_timeout)
        placements = deployment.client.burst(workload.scaling_orders, workload.clients)
        watcher.wait_for(_accepted(placements), workload.recovery_timeout)
        result[f"orders_per_s_{units}"] = _throughput(placements, watcher)
        result[f"scaled_{units}"] = what
        result[f"rss_mib_of_unit_{units}"] = round(sum(rss_mib(process.pid) for process in added), 1)
    one, two = result["orders_per_s_1"], result["orders_per_s_2"]
    gained = (two - one) if one is not None and two is not None else None
    cost = result["rss_mib_of_unit_2"] / gained if gained and gained > 0 else None
    result["mib_per_extra_order_per_s"] = round(cost, 2) if cost is not None else None
    return result


SCENARIOS: dict[str, Callable[[Deployment, NotificationWatcher, Workload], dict[str, Any]]] = {
    "latency": measure_latency,
    "saturation": measure_saturation,
    "consistency": measure_consistency,
    "outage": measure_outage,
    "database_outage": measure_database_outage,
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
    micro, mono = results["microservices"], results["monolith"]

    def latency(r: dict[str, Any]) -> str:
        lat = r["latency"]
        return f"{_ms(lat['p50_ms'])} / {_ms(lat['p95_ms'])} / {_ms(lat['p99_ms'])}"

    def to_final(r: dict[str, Any]) -> str:
        c = r["consistency"]
        if c["final_at_answer"] == c["orders"]:
            return f"at the answer ({c['orders']} of {c['orders']} orders final when answered)"
        return f"{_ms(c['to_final_p50_ms'])} / {_ms(c['to_final_p99_ms'])}"

    def in_between(r: dict[str, Any]) -> str:
        c = r["consistency"]
        return (f"{c['in_between_reads']} of {c['reads']} reads; {c['orders_seen_in_between']} of {c['orders']} "
                "orders seen in between")

    def outage(r: dict[str, Any]) -> str:
        o = r["outage"]
        text = (f"{o['accepted']} accepted, {o['finished']} finished, {o['lost']} lost; "
                f"recovered in {_value(o['recovered_in_s'])} s")
        return text + (f"; {o['dead_letters']} dead letters" if "dead_letters" in o else "")

    def database(r: dict[str, Any]) -> str:
        d = r["database_outage"]
        return (f"{d['accepted']} accepted, longest answer {_ms(d['longest_answer_ms'])} ms, {d['finished']} finished, "
                f"{d['lost']} lost; recovered in {_value(d['recovered_in_s'])} s")

    def scaling(r: dict[str, Any]) -> str:
        s = r["scaling"]
        cost = s["mib_per_extra_order_per_s"]
        return (f"{_value(s['orders_per_s_1'])} -> {_value(s['orders_per_s_2'])}; "
                f"+{s['rss_mib_of_unit_2']} MiB, {_value(cost)} MiB per extra order/s")

    def deployment(r: dict[str, Any]) -> str:
        d = r["deployment"]
        return (
            f"{d['refused_attempts']} refused attempts ({d['refusing_for_s']} s refusing), "
            f"max delay {_ms(d['max_ms'])} ms, {d['lost']} lost"
        )

    return [
        Row("Direct calls are faster", "latency placed -> notified, p50 / p95 / p99 (ms)", latency(micro),
            latency(mono), f"{workload.latency_orders} orders paced at {workload.latency_rate:g}/s; POST sent -> log "
            "line sent_at; HDR histogram"),
        Row("Direct calls are faster", "throughput at saturation (orders/s, notified)",
            _value(micro["saturation"]["orders_per_s"]), _value(mono["saturation"]["orders_per_s"]),
            f"median of {workload.saturation_runs} bursts of {workload.saturation_orders} orders from "
            f"{workload.clients} client threads; notified / (last sent_at - first POST)"),
        Row("One transaction is easier to keep consistent", "a reader sees the final state, after the POST's answer "
            "(p50 / p99 ms)", to_final(micro), to_final(mono),
            f"{workload.consistency_orders} orders, each of a product of its own; one reader polls the order and the "
            "product from the answer on, until the order is final"),
        Row("One transaction is easier to keep consistent", "reads that saw an in-between state (stock taken, order "
            "still PENDING)", in_between(micro), in_between(mono), "the same reads"),
        Row("Failure is isolated", f"payment down for {workload.outage_seconds:g} s while orders arrive",
            outage(micro), outage(mono),
            f"{workload.outage_rate:g} orders/s during the window; microservices: payment worker stopped, then "
            "started; monolith: payment's deliveries held (rows in its database), then let go; lost = accepted, "
            f"never notified within {workload.recovery_timeout:g} s"),
        Row("Each service owns its data", f"a database unavailable for {workload.database_outage_seconds:g} s while "
            "orders arrive", database(micro), database(mono),
            f"{workload.outage_rate:g} orders/s; the database held under an exclusive lock (microservices: the "
            "payment service's own; monolith: its only one); the client waits for each answer"),
        Row("Services scale independently; a monolith scales as a whole",
            "throughput with a slow gateway, 1 -> 2 units (orders/s); memory of the extra unit",
            scaling(micro), scaling(mono),
            f"SHOP_GATEWAY_DELAY={workload.gateway_delay:g} s per charge; burst of {workload.scaling_orders} orders "
            f"from {workload.clients} client threads per step; microservices: {micro['scaling']['scaled_2']}; "
            f"monolith: {mono['scaling']['scaled_2']}, the client spreading its orders over both; resident memory "
            "of the added process"),
        Row("Independent deployment", "restart while orders flow: refused / delayed / lost",
            deployment(micro), deployment(mono),
            f"{workload.deploy_rate:g} orders/s for {workload.deploy_seconds:g} s, restart a third of the way in "
            f"(microservices: {micro['deployment']['restarted']}; monolith: {mono['deployment']['restarted']}); "
            "the client retries refused POSTs; delay from first attempt to notification"),
    ]


def markdown(results: dict[str, Any], table: list[Row]) -> str:
    info = results["machine"]
    lines = [
        "# shop compare: microservices vs monolith",
        "",
        f"Measured {results['finished_at']} on {info['cores']} cores (load {info['load_average_1m_at_start']} at "
        f"start, {info['platform']}, Python {info['python']}); workload `{results['workload_name']}`. "
        "Same handlers, same HTTP API, same notification log, both on databases (a SQLite file per service; the "
        "monolith's one SQLite file); only the wiring differs.",
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
        "retry_policy": {"max_retries": BusSettings().max_retries, "retry_backoff": BusSettings().retry_backoff},
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
    markdown_path.write_text(markdown(results, table))
    json_path.write_text(json.dumps(results, indent=2))
    return Comparison(results, table, markdown_path, json_path)
