"""The pipelines under test, behind one small interface: start workers, place an order, tell which orders are done.

All pipelines are fed the same way (the first hop is enqueued by the load generator, no HTTP) and timed the same way:
each records the moment an order is notified, inside the hop that notifies (the full system in the order document,
from NotificationSent; the others in a Redis hash), and the load generator's poll over the orders still in flight
reads those moments. So none gets a cheaper front door or a more precise clock than another, and the poll's period
does not enter the latency.
"""

from __future__ import annotations

import abc
import time
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import uuid4

import redis

from events.settings import BusSettings
from shop.bench import bare_celery, journey
from shop.bench.procs import WorkerGroup, python_module

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

PAYMENT = "payment"
"""Role name of the first hop's worker: the one the scaling table multiplies."""


class Pipeline(abc.ABC):
    mode: str
    description: str
    roles: tuple[str, ...]

    def __init__(self, settings: BusSettings, workers: WorkerGroup) -> None:
        self.settings = settings
        self.workers = workers
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.worker_names: list[str] = []
        self.env: dict[str, str] = {"REDIS_URL": settings.redis_url, "BROKER_URL": settings.redis_url}
        """what this pipeline's workers see beside the benchmark's environment (their Redis, stores, dispatch)"""

    def start(self) -> None:
        for role in self.roles:
            self.add_worker(role)

    def add_worker(self, role: str) -> str:
        name = f"{self.mode}.{role}.{sum(n.startswith(f'{self.mode}.{role}.') for n in self.worker_names) + 1}"
        self.workers.start(name, self.worker_argv(role), self.env)
        self.worker_names.append(name)
        return name

    def remove_worker(self, name: str) -> None:
        self.workers.stop(name)
        self.worker_names.remove(name)

    def pids(self) -> dict[str, int]:
        return self.workers.pids(self.worker_names)

    def database_pids(self) -> list[int] | None:
        """The processes of a database server that serve this pipeline, where it runs one on this machine; None
        where the database lives inside the workers (SQLite) or there is none of its own."""
        return None

    @abc.abstractmethod
    def worker_argv(self, role: str) -> list[str]: ...

    @abc.abstractmethod
    def place(self) -> str:
        """Enqueue one order's first hop; returns its id."""

    @abc.abstractmethod
    def done(self, order_ids: list[str]) -> dict[str, float]:
        """Those of these orders that have completed the whole journey, each with the moment it was notified (epoch
        seconds, this machine's clock): where its "placed -> notified" latency ends."""

    def close(self) -> None:
        """Release what the pipeline holds in this process (connections)."""
        self.redis.close()


class FullSystem(Pipeline):
    """The shop in microservices mode on one kind of store: one `python -m shop worker <service>` per consuming
    service, orders placed by the order service's own command on a unit of work of the same wiring the API uses. Done =
    the order document's `notified_at` is set, read from the order service's store (nothing is added to the services
    for the benchmark)."""

    def __init__(self, settings: BusSettings, workers: WorkerGroup, store: str, database_url: str) -> None:
        super().__init__(settings, workers)
        from events.settings import StoreSettings
        from order_service import handlers
        from shop.bootstrap import bootstrap, declare_topology

        self.mode = f"full-{store}"
        self.roles = tuple(PAYMENT if name == "payment_service" else name for name in journey.consumers())
        self.description = f"shop microservices on {store} stores: {len(self.roles)} x `shop worker`"
        self.env["SHOP_DATABASE_URL"] = database_url
        declare_topology(settings)
        self._wiring = bootstrap(settings, StoreSettings(database_url=database_url))
        self._orders = self._wiring.store("order_service")
        self._place_order = handlers.place_order
        self._items = journey.order_items()
        self._backends = _PostgresBackends(database_url) if store == "postgres" else None

    def start(self) -> None:
        super().start()
        if journey.needs_product():
            self._stock_the_catalogue(timeout=60)

    def _stock_the_catalogue(self, timeout: float) -> None:
        """Create the benchmark's product and wait until the order service's catalogue projection knows it."""
        from order_service.store import CATALOGUE

        journey.create_product(self._wiring.unit_of_work, self._wiring.commit)
        deadline = time.monotonic() + timeout
        while not self._orders.documents("order_service", CATALOGUE, [journey.BENCH_PRODUCT]):
            if time.monotonic() > deadline:
                self.workers.check_alive()
                raise RuntimeError(f"the order service's catalogue did not learn {journey.BENCH_PRODUCT} in {timeout}s")
            time.sleep(0.05)

    def worker_argv(self, role: str) -> list[str]:
        from shop.supervisor import shop_command

        return shop_command("worker", "payment_service" if role == PAYMENT else role)

    def place(self) -> str:
        uow = self._wiring.unit_of_work("order_service")
        order = self._place_order(uow, customer_id="bench", items=self._items, payment_method="card")
        self._wiring.commit(uow)
        return str(order.id)

    def done(self, order_ids: list[str]) -> dict[str, float]:
        """Done = the order service has recorded the notification; notified = its `notified_at`, the moment the
        notification service sent it (NotificationSent's `occurred_at`)."""
        from order_service.store import COLLECTION

        found = self._orders.documents("order_service", COLLECTION, order_ids)
        return {order_id: datetime.fromisoformat(order["notified_at"]).timestamp()
                for order_id, order in found.items() if order.get("notified_at") is not None}

    def database_pids(self) -> list[int] | None:
        return None if self._backends is None else self._backends.pids()

    def close(self) -> None:
        super().close()
        self._wiring.close()
        if self._backends is not None:
            self._backends.close()


def postgres_databases(template: str) -> tuple[URL, list[str]]:
    """The URL of the `postgres` database on the server of `template` (a URL with `{service}`), and the names of the
    services' databases it makes."""
    from sqlalchemy.engine import make_url

    from events.adapters.sql.engine import normalise
    from shop.services import SERVICES

    url = make_url(normalise(template.replace("{service}", "x")))
    names = [make_url(normalise(template.replace("{service}", service))).database or "" for service in SERVICES]
    return url.set(database="postgres"), names


class _PostgresBackends:
    """The server processes of a pipeline's PostgreSQL databases (one backend per connection, pg_stat_activity), so
    that their CPU can be read from /proc like a worker's: the database's share of the cost of an order. Only for a
    server on this machine; the load generator's own connections are among them, as Redis' figure includes its
    polls."""

    def __init__(self, template: str) -> None:
        from sqlalchemy import create_engine

        admin, self.names = postgres_databases(template)
        self.local = admin.host in (None, "", "127.0.0.1", "localhost", "::1")
        self._engine = create_engine(admin, isolation_level="AUTOCOMMIT", pool_size=1)

    def pids(self) -> list[int] | None:
        from sqlalchemy import bindparam, text

        if not self.local:
            return None
        query = text("SELECT pid FROM pg_stat_activity WHERE datname IN :names").bindparams(
            bindparam("names", expanding=True))
        with self._engine.connect() as connection:
            return [int(pid) for pid in connection.execute(query, {"names": self.names}).scalars()]

    def close(self) -> None:
        self._engine.dispose()


class BareCelery(Pipeline):
    mode = "bare"

    def __init__(self, settings: BusSettings, workers: WorkerGroup) -> None:
        super().__init__(settings, workers)
        bare_celery.app.conf.broker_url = settings.redis_url
        steps = journey.journey()
        sides = journey.side_deliveries()
        # each step: (its queue, the queues that get a side copy of what the previous step sends it, whether its hop
        # is the one that notifies the customer)
        self.route = tuple(
            (
                bare_celery.queue_for(service),
                tuple(bare_celery.queue_for(side) for side in sides.get(steps[index - 1], ())) if index else (),
                service == journey.NOTIFIER,
            )
            for index, service in enumerate(steps)
        )
        self._queues = {PAYMENT if queue == bare_celery.queue_for("payment_service") else queue: queue
                        for queue in dict.fromkeys(queue for queue, _, _ in self.route)}
        self.roles = tuple(self._queues)
        deliveries = len(self.route) + sum(len(side) for _, side, _ in self.route)
        self.description = (
            f"bare celery: same {len(self.route)} hops ({deliveries} deliveries), no-op tasks, "
            f"{len(self.roles)} solo workers"
        )

    def worker_argv(self, role: str) -> list[str]:
        return python_module("shop.bench.bare_celery", self._queues[role])

    def place(self) -> str:
        order_id = uuid4().hex
        bare_celery.place(order_id, self.route)
        return order_id

    def done(self, order_ids: list[str]) -> dict[str, float]:
        return _stamped(self.redis, bare_celery.DONE_KEY, order_ids)


class Monolith(Pipeline):
    """`shop monolith`'s wiring in one process (shop/bench/monolith_process.py), on its one SQLite database, in one
    dispatch mode: one process does every hop, so "same number of worker processes" does not apply; its CPU per order
    is the comparable figure."""

    roles = ("monolith",)

    def __init__(self, settings: BusSettings, workers: WorkerGroup, dispatch: str, database_url: str) -> None:
        super().__init__(settings, workers)
        self.mode = "monolith" if dispatch == "sync" else f"monolith-{dispatch}"
        self.description = f"shop monolith ({dispatch} dispatch, one database): every service in 1 process"
        self.env.update(SHOP_MONOLITH_DISPATCH=dispatch, SHOP_MONOLITH_DATABASE_URL=database_url)

    def worker_argv(self, role: str) -> list[str]:
        return python_module("shop.bench.monolith_process", self.mode)

    def place(self) -> str:
        from shop.bench.monolith_process import orders_key

        token = uuid4().hex
        self.redis.lpush(orders_key(self.mode), token)
        return token

    def done(self, order_ids: list[str]) -> dict[str, float]:
        from shop.bench.monolith_process import done_key

        return _stamped(self.redis, done_key(self.mode), order_ids)


def monolith_available() -> tuple[bool, str]:
    """The monolith is another piece of work; the benchmark measures it when it is there, and says so when not."""
    try:
        from shop.bootstrap import bootstrap_monolith  # noqa: F401
    except ImportError as exc:
        return False, f"skipped: shop.bootstrap.bootstrap_monolith is not available ({exc})"
    return True, "measured"


def _stamped(client: redis.Redis, key: str, order_ids: list[str]) -> dict[str, float]:
    """{order id: the notification time its pipeline wrote into the hash `key`} for those of `order_ids` it holds."""
    if not order_ids:
        return {}
    stamps = client.hmget(key, order_ids)
    return {order_id: float(stamp) for order_id, stamp in zip(order_ids, stamps, strict=True) if stamp is not None}
