"""The long-running processes of the shop, as `shop` command lines, and starting them all on one machine.

One list for both ways of running it: `shop up` supervises these (through `shop_command`, which runs the same CLI
with the current interpreter) and docker-compose.yml runs each one as a container. A test holds the two together.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from events.adapters.ed25519.keyring import KeyRing, generate
from events.settings import BusSettings
from shop.bootstrap import MissingKeys, bootstrap, declare_topology
from shop.embedded_redis import EmbeddedRedis, choose_broker
from shop.services import APIS, CONSUMERS, SERVICES
from shop.supervisor import Supervisor, shop_command


def shop_processes() -> dict[str, list[str]]:
    """{process name: argv starting with `shop`}: one worker per event-consuming service (named after it), then one
    API per service that has one (`order_api`, ...)."""
    processes = {name: ["shop", "worker", name] for name in CONSUMERS}
    processes.update({api.process_name: ["shop", "api", service] for service, api in APIS.items()})
    return processes


def freeze_startup_heap() -> None:
    """Called once a long-running process has started (imports, wiring, connections) and before it serves: what is
    alive then lives as long as the process, so it moves to the collector's permanent generation (`gc.freeze`, as
    Python's documentation suggests and celery deployments do before forking). A full collection then walks only what
    was made since: a worker's took 80 to 215 ms here when it walked its start-up heap, a stall of every message in
    flight."""
    gc.collect()
    gc.freeze()


def supervised_commands() -> dict[str, list[str]]:
    """What `shop up` hands its supervisor: the same processes, each run as `python -m shop ...` so the children use
    the interpreter (and virtualenv) of the parent even when the `shop` script is not on PATH."""
    return {name: shop_command(*argv[1:]) for name, argv in shop_processes().items()}


def start_everything(
    var_dir: Path, report: Callable[[str], None], demo: bool = False
) -> tuple[Supervisor, EmbeddedRedis | None]:
    """Find (or start) a Redis, declare the topology, bring every service's database to the current schema, start every
    worker and API under a supervisor. Refuses to start without the services' keys, unless `demo` (then throwaway keys
    are generated)."""
    settings = BusSettings()
    if demo:
        written = generate(settings.keys_path, SERVICES)
        if written:
            report(f"demo: throwaway signing keys written to {settings.keys_path}")
    elif missing := KeyRing.load(settings.keys_path).missing(SERVICES, SERVICES):
        raise MissingKeys(f"missing in {settings.keys_path}: {', '.join(missing)}: run `shop keys generate` first "
                          "(or `shop demo`, which makes throwaway ones)")
    url, embedded = choose_broker(var_dir)
    if embedded:
        report(f"no Redis configured or running: started an embedded one at {url}")
    os.environ["REDIS_URL"] = url
    prepare(BusSettings())
    supervisor = Supervisor(supervised_commands(), env={"REDIS_URL": url}, report=report)
    supervisor.start()
    return supervisor, embedded


def prepare(settings: BusSettings) -> list[str]:
    """Declare the topology and migrate every service's database (what `shop declare`, `shop up` and the compose
    declare step do before anything else runs); returns where each service keeps its data."""
    declare_topology(settings)
    wiring = bootstrap(settings)
    try:
        return [f"{service}: {store_location(wiring, service)}" for service in wiring.stores]
    finally:
        wiring.close()


def store_location(wiring: Any, service: str) -> str:
    database = wiring.sql.get(service)
    if database is not None:
        return str(database.write.url.render_as_string(hide_password=True))
    return "the Redis store" + (" beside the broker" if service not in wiring.outboxes else "")
