"""`shop worker <service>`: one celery worker consuming one service's queue.

Its logs are JSON lines on stderr by default (one object per line: what a log shipper and `jq` read without a
parser of ours), with one line per handled message from `shop.messages` (events/observability.py).
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Literal

from celery.platforms import SecurityWarning
from celery.signals import worker_ready
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.runtime.observability import MESSAGE_LOG
from events.settings import BusSettings
from shop.bootstrap import bootstrap_worker
from shop.processes import freeze_startup_heap
from shop.telemetry import shutdown as shutdown_tracing


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_", extra="ignore")

    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line; text: for a human")
    log_messages: bool = Field(True, description="one log line per handled message (service, type, ids, outcome, ms)")


def log_formatter(service: str, log_format: str = "json") -> logging.Formatter:
    """JSON: time, level, logger, message, the service, and every `extra` field of the record (the per-message ids
    and outcome). python-json-logger rather than a formatter of our own: small, maintained, and it already handles
    exceptions, non-JSON values and reserved record attributes."""
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(
            "{asctime}{levelname}{name}{message}", style="{", static_fields={"service": service},
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    return logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s")


def configure_logging(service: str, loglevel: str, settings: WorkerSettings) -> None:
    """Root handler on stderr; `shop.messages` at INFO when per-message lines are wanted, whatever the celery log
    level (WARNING by default, so celery itself stays quiet)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(service, settings.log_format))
    logging.basicConfig(level=loglevel, handlers=[handler], force=True)
    MESSAGE_LOG.setLevel(logging.INFO if settings.log_messages else logging.WARNING)


def _freeze_when_ready(**_: object) -> None:
    """celery's `worker_ready`: connected, consuming from the next loop turn on."""
    freeze_startup_heap()


def run_worker(
    service: str, settings: BusSettings | None = None, loglevel: str = "WARNING", node: str | None = None
) -> None:
    """`node` names this worker (default `<service>@<host>`); give each worker of one service on one host its own."""
    settings = settings or BusSettings()
    worker = bootstrap_worker(service, settings, node)
    worker.start_background()
    warnings.filterwarnings("ignore", category=SecurityWarning)  # containers and CI run as root by design
    configure_logging(service, loglevel, WorkerSettings())
    worker_ready.connect(_freeze_when_ready, weak=False)
    try:
        worker.app.worker_main(
            [
                "--quiet",  # no banner: the supervisor reports starts and restarts
                "worker",
                f"--queues={worker.queue.name}",  # prefixed on RabbitMQ (SHOP_AMQP_PREFIX)
                f"--pool={settings.worker_pool}",
                "--concurrency=1",
                f"--hostname={worker.node}",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        worker.stop_background()
        shutdown_tracing()  # what the batch span processor still holds

