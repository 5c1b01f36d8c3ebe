"""`shop chaos`: place many orders while killing workers and restarting Redis, then audit every service's store.

What it proves: at-least-once delivery plus idempotent consumers give exactly-once *effects*. Workers are killed
with SIGKILL at random moments (mid-message included), the broker is killed -9 and restarted from its AOF once, the
services' databases have an outage of their own (`--store postgres`: a private PostgreSQL server killed -9 and
restarted, recovering from its WAL; `--store sqlite`: every database file held under an exclusive lock for a while, as
a stalled disk would), and ~1% of the traffic is poison (orders whose charge kills the payment worker every time) or
tampered (a bad signature). Afterwards every order must be settled and notified exactly once, no order charged twice,
and every poison or tampered message must sit in a dead-letter store. Everything runs on private servers.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import redis

from events.adapters.ed25519.keyring import generate
from events.adapters.redis.broker import RedisBroker
from events.adapters.redis.connection import text
from events.adapters.redis.keys import Keys
from events.adapters.redis.worker import in_flight
from events.catalog import OrderCreated, OrderItem
from events.envelope import Envelope
from events.messaging import OutgoingMessage
from events.settings import BusSettings
from events.unit_of_work import ConcurrentUpdate
from notification_service.notification_log import read_notifications
from order_service.handlers import place_order
from payment_service.gateway import RedisLedger
from product_service.domain import ReservationStatus
from product_service.store import PRODUCTS, RESERVATIONS
from shop.bootstrap import UNAVAILABLE, Wiring, bootstrap, declare_topology
from shop.postgres_server import PostgresServer
from shop.redis_server import RedisServer
from shop.seeding import NewProduct, seed_products
from shop.services import CONSUMERS, SERVICES
from shop.supervisor import Supervisor, shop_command

REPORTED = ("store", "orders", "poison_orders", "tampered_messages", "kills", "worker_restarts", "redis_restarts",
            "database_outages", "settled",
            "lost", "double_charged", "duplicate_notifications", "missing_notifications", "dead_lettered",
            "poison_not_dead_lettered", "unexpected_dead_letters", "stock_mismatches", "relayed", "outbox_unsettled",
            "seconds")
"""The figures `shop chaos` prints, in order."""

STORES = ("redis", "sqlite", "postgres")
SQLITE_OUTAGE_SECONDS = 3.0

CHAOS_PRODUCTS = [NewProduct(f"sku-{n}", f"Article {n}", "9.90", 1_000_000) for n in range(13)]
"""Plenty of stock: the run is about losing and duplicating, not about running out."""


@dataclass
class ChaosReport:
    store: str = "redis"
    orders: int = 0
    poison_orders: int = 0
    tampered_messages: int = 0
    kills: int = 0
    redis_restarts: int = 0
    worker_restarts: int = 0
    settled: int = 0
    lost: int = 0
    double_charged: int = 0
    duplicate_notifications: int = 0
    missing_notifications: int = 0
    dead_lettered: int = 0
    database_outages: int = 0
    relayed: int = 0
    outbox_unsettled: int = 0
    unexpected_dead_letters: int = 0
    poison_not_dead_lettered: int = 0
    stock_mismatches: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def run_chaos(
    orders: int = 5000,
    kill_every: float = 3.0,
    poison_ratio: float = 0.01,
    rate: float = 100.0,
    work_dir: Path = Path("var/chaos"),
    quiesce_timeout: float = 600.0,
    report: Callable[[str], None] = print,
    store: str = "redis",
) -> ChaosReport:
    if store not in STORES:
        raise ValueError(f"--store is one of {', '.join(STORES)}")
    started = time.monotonic()
    run_dir = (Path(work_dir) / time.strftime("%Y%m%d-%H%M%S")).resolve()
    server = RedisServer(run_dir / "redis").start()
    database = PostgresServer(run_dir / "postgres").start() if store == "postgres" else None
    log_path = run_dir / "notifications.log"
    generate(run_dir / "keys", SERVICES)  # a self-contained run: throwaway keys of its own
    env = {
        "SHOP_KEYS_DIR": str(run_dir / "keys"),
        "REDIS_URL": server.url,
        "SHOP_DATABASE_URL": {"redis": "redis", "sqlite": f"sqlite:///{run_dir}/db/{{service}}.sqlite3",
                              "postgres": database.url("shop_{service}") if database else ""}[store],
        "SHOP_NOTIFICATION_LOG": str(log_path),
        "SHOP_VISIBILITY_TIMEOUT": "5",
        "SHOP_REDELIVER_AFTER": "10",
        # A poison message costs one worker restart per delivery (solo pool: the process dies with it), so the
        # threshold is kept low; every message a killed worker held counts when it is delivered again (the one it
        # was running cannot be told from the rest of its batch), so a message would need to be running at two
        # random kills, after a first death with it in the batch, to be mistaken for one.
        "SHOP_MAX_DELIVERIES": "3",
        "SHOP_FAULT_INJECTION": "1",
        "SHOP_GATEWAY_FLAKY_FAILURES": "1",
        "SHOP_RETRY_BACKOFF": "0.1",
        "SHOP_LOG_MESSAGES": "false",  # tens of thousands of lines on the console would bury the report
    }
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    settings = BusSettings()
    declare_topology(settings)
    wiring = bootstrap(settings)  # the databases created and migrated before any worker starts
    supervisor = Supervisor(
        {name: shop_command("worker", name) for name in CONSUMERS}, env=env, report=lambda text: None,
        backoff=0.2, max_backoff=0.5,
    )
    supervisor.start()
    result = ChaosReport(store=store)
    placed: dict[str, str] = {}  # order id -> payment method
    tampered: list[str] = []
    stop_killing = threading.Event()
    rng = random.Random(7)

    def killer() -> None:
        while not stop_killing.wait(kill_every * rng.uniform(0.5, 1.5)):
            alive = [c.process for c in supervisor.children.values() if c.process and c.process.poll() is None]
            if alive:
                victim = rng.choice(alive)
                try:
                    os.killpg(victim.pid, signal.SIGKILL)
                    result.kills += 1
                except ProcessLookupError:
                    pass

    seed_products(wiring, CHAOS_PRODUCTS, timeout=quiesce_timeout)  # before the killing starts
    killing = threading.Thread(target=killer, daemon=True)
    killing.start()
    try:
        restart_at = orders * 2 // 5
        outage_at = orders * 3 // 5
        poison_at, tamper_at = orders // 4, orders // 2
        interval = 1.0 / rate
        next_at = time.monotonic()
        for n in range(orders):
            supervisor.poll()
            if n == restart_at:
                server.restart()
                result.redis_restarts += 1
                report(f"chaos: redis-server killed -9 and restarted after {n} orders")
            if n == outage_at and store != "redis":
                outage = _database_outage(wiring, database, run_dir)
                result.database_outages += 1
                report(f"chaos: {outage} after {n} orders")
            # The dice decide most faults; one poison order and one tampered message are placed whatever they say,
            # so that even a short run exercises both.
            roll = 0.0 if n == poison_at else poison_ratio * 0.75 if n == tamper_at else rng.random()
            if roll < poison_ratio / 2:
                method = "card_crash"
            elif roll < poison_ratio:
                tampered.append(_inject_tampered(wiring, rng))
                method = "card"
            elif roll < 0.10:
                method = "card_declined"
            elif roll < 0.15:
                method = "card_flaky"
            else:
                method = "card"
            placed[_place_surviving_outages(wiring, n, method)] = method
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
            if n and n % 500 == 0:
                report(f"chaos: {n} orders placed, {result.kills} kills")
        stop_killing.set()
        killing.join()
        report(f"chaos: all {orders} orders placed; waiting for quiescence")
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + quiesce_timeout
        while time.monotonic() < deadline:
            supervisor.poll()
            if _quiet(wiring, client, placed):
                break
            time.sleep(0.5)
        _audit(wiring, client, placed, tampered, log_path, result)
    finally:
        stop_killing.set()
        result.worker_restarts = sum(child.restarts for child in supervisor.children.values())
        supervisor.stop()
        wiring.close()
        server.stop()
        if database is not None:
            database.stop()
        for name, value in previous.items():  # the caller's environment as it was
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    result.seconds = round(time.monotonic() - started, 1)
    (run_dir / "report.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _place_surviving_outages(wiring: Wiring, n: int, method: str) -> str:
    """Place one order; while a store or Redis is down, retry: the reads with a fresh unit of work (nothing is written
    yet), the commit with the *same* unit of work, so an order is never placed twice."""
    items = [OrderItem(product_id=CHAOS_PRODUCTS[n % len(CHAOS_PRODUCTS)].id, quantity=1 + n % 3)]
    placed = None
    for _ in range(1200):
        try:
            if placed is None:
                uow = wiring.unit_of_work("order_service")
                placed = (uow, place_order(uow, customer_id=f"customer-{n % 97}", payment_method=method, items=items))
            placed[0].commit()
            return str(placed[1].id)
        except ConcurrentUpdate:
            assert placed is not None
            return str(placed[1].id)  # an earlier attempt did commit; its answer was lost with the connection
        except UNAVAILABLE:
            time.sleep(0.05)
    raise RuntimeError("the order service's store did not come back within 60 s")


def _inject_tampered(wiring: Wiring, rng: random.Random) -> str:
    """A well-formed message whose signature does not match its envelope, straight into a random queue (no outbox
    copy: only the atomic take keeps it from being lost)."""
    order_id = uuid4()
    event = OrderCreated(order_id=order_id, customer_id="mallory", items=(), total=Decimal("0.00"),
                         payment_method="card")
    envelope = Envelope.wrap(event, producer="order_service", correlation_id=order_id)
    forged = base64.urlsafe_b64encode(bytes(64)).decode()  # the right length, not the order service's signature
    message = OutgoingMessage(str(order_id), event.type_name, str(order_id), envelope.model_dump_json(), forged)
    queue = rng.choice(list(CONSUMERS))
    broker = wiring.broker
    assert isinstance(broker, RedisBroker), "the chaos run injects into Redis lists"
    for _ in range(600):
        try:
            key, payload = broker.messages.build(queue, message, f"tampered:{order_id}")
            wiring.redis.lpush(key, payload)
            return str(order_id)
        except (redis.ConnectionError, redis.BusyLoadingError):
            time.sleep(0.05)
    raise RuntimeError("Redis did not come back within 30 s")


def _database_outage(wiring: Wiring, database: PostgresServer | None, run_dir: Path) -> str:
    """PostgreSQL: the server killed -9 and started again. SQLite: every service's file held under an exclusive lock
    for a few seconds (a library has no server to restart; this is its outage: writers wait or fail, then go on)."""
    if database is not None:
        database.restart()
        return "postgres killed -9 and restarted"
    holders = []
    for path in sorted((run_dir / "db").glob("*.sqlite3")):
        holder = sqlite3.connect(path, timeout=30, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        holders.append(holder)
    time.sleep(SQLITE_OUTAGE_SECONDS)
    for holder in holders:
        holder.execute("ROLLBACK")
        holder.close()
    return f"{len(holders)} SQLite databases locked for {SQLITE_OUTAGE_SECONDS:g} s"


def _quiet(wiring: Wiring, client: redis.Redis, placed: dict[str, str]) -> bool:
    """Nothing queued, in flight or waiting in an outbox for the relay (a message lost with a killed worker is only
    there until the relay re-sends it: a poison order can be in that state while every other order is done)."""
    try:
        if any(client.llen(queue) or in_flight(client, queue) or client.hlen(Keys.outbox(queue))
               for queue in CONSUMERS):
            return False
        if wiring.outbox_pending():
            return False
        orders = wiring.store("order_service").documents("order_service", "order")
    except UNAVAILABLE:
        return False
    return all(
        orders.get(order_id, {}).get("notified_at") for order_id, method in placed.items() if method != "card_crash"
    )


def _audit(
    wiring: Wiring, client: redis.Redis, placed: dict[str, str], tampered: list[str], log_path: Path,
    result: ChaosReport,
) -> None:
    orders = wiring.store("order_service").documents("order_service", "order")
    expected_final = [o for o, method in placed.items() if method != "card_crash"]
    poison = [o for o, method in placed.items() if method == "card_crash"]
    result.orders, result.poison_orders, result.tampered_messages = len(placed), len(poison), len(tampered)
    result.settled = sum(orders.get(o, {}).get("status") in ("CONFIRMED", "CANCELLED") for o in expected_final)
    result.lost = sum(
        orders.get(o, {}).get("status") not in ("CONFIRMED", "CANCELLED") or not orders.get(o, {}).get("notified_at")
        for o in expected_final
    )
    charges = Counter(text(c) for c in client.lrange(RedisLedger.CHARGES, 0, -1))
    result.double_charged = sum(1 for count in charges.values() if count > 1)
    confirmed = {o for o in expected_final if orders.get(o, {}).get("status") == "CONFIRMED"}
    if set(charges) != confirmed:
        result.problems.append(f"charges do not match confirmed orders ({len(charges)} vs {len(confirmed)})")
    lines = Counter(line["order_id"] for line in read_notifications(log_path))
    result.duplicate_notifications = sum(1 for count in lines.values() if count > 1)
    result.missing_notifications = sum(1 for o in expected_final if lines.get(o, 0) == 0)
    result.relayed = sum(int(client.get(Keys.relayed(queue)) or 0) for queue in CONSUMERS)
    result.outbox_unsettled = sum(client.hlen(Keys.outbox(queue)) for queue in CONSUMERS)
    result.outbox_unsettled += wiring.outbox_pending() or 0
    dead = wiring.dead_letters.list()
    result.dead_lettered = len(dead)
    dead_text = [(record["reason"], json.dumps(record["message"])) for record in dead]
    result.poison_not_dead_lettered = sum(
        not any(reason == "poison message" and o in text for reason, text in dead_text) for o in poison
    ) + sum(not any(reason == "bad signature" and o in text for reason, text in dead_text) for o in tampered)
    result.unexpected_dead_letters = result.dead_lettered - (
        len(poison) + len(tampered) - result.poison_not_dead_lettered)
    result.stock_mismatches = _audit_stock(wiring, len(placed))
    for name in ("lost", "double_charged", "duplicate_notifications", "missing_notifications",
                 "poison_not_dead_lettered", "unexpected_dead_letters", "outbox_unsettled", "stock_mismatches"):
        if getattr(result, name):
            result.problems.append(f"{name.replace('_', ' ')}: {getattr(result, name)}")


def _audit_stock(wiring: Wiring, orders: int) -> int:
    """Reservations taken or given back twice would show here: each product's stock must equal its initial stock
    minus what reservations still hold (confirmed orders, and poison ones that never reached a payment decision),
    and there must be one reservation per order. Returns the number of mismatches."""
    store = wiring.store("product_service")
    reservations = store.documents("product_service", RESERVATIONS)
    products = store.documents("product_service", PRODUCTS)
    held: Counter[str] = Counter()
    for reservation in reservations.values():
        if reservation["status"] == ReservationStatus.RESERVED:
            held.update(reservation["quantities"])
    initial = {product.id: product.stock for product in CHAOS_PRODUCTS}
    mismatches = sum(products[sku]["stock"] != initial[sku] - held[sku] for sku in initial)
    return mismatches + abs(len(reservations) - orders)
