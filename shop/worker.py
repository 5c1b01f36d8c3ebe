"""`shop worker <service>`: one celery worker consuming one service's queue."""

from __future__ import annotations

import logging
import socket
import warnings

from celery.platforms import SecurityWarning

from events.redis_bus import OutboxRelay, ServiceRuntime
from events.settings import BusSettings
from shop.services import SERVICES


def run_worker(service: str, settings: BusSettings | None = None, loglevel: str = "WARNING") -> None:
    settings = settings or BusSettings()
    runtime = ServiceRuntime(SERVICES[service], settings)
    runtime.declare()
    OutboxRelay(runtime.spec.queue, settings, runtime.redis).start()
    warnings.filterwarnings("ignore", category=SecurityWarning)  # containers and CI run as root by design
    logging.basicConfig(level=loglevel, format=f"%(asctime)s {service} %(levelname)s %(message)s")
    runtime.app.worker_main(
        [
            "--quiet",  # no banner: the supervisor reports starts and restarts
            "worker",
            f"--queues={runtime.spec.queue}",
            f"--pool={settings.worker_pool}",
            "--concurrency=1",
            f"--hostname={service}@{socket.gethostname()}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
