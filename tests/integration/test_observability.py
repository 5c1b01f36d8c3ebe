"""What the workers tell: one JSON log line and counters per message (whatever its outcome), Prometheus metrics read
back from Redis, and an order's journey traced from the event log on a real run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from events.adapters.redis.eventlog import RedisEventLog
from events.adapters.redis.keys import Keys
from events.adapters.redis.worker import metrics_sink
from events.bus import TransientError
from events.catalog import OrderItem, PaymentProcessed
from events.envelope import Envelope, seal
from events.runtime.consumer import Delivery, ServiceRuntime
from events.runtime.observability import MESSAGE_LOG
from events.settings import BusSettings
from order_service.handlers import place_order
from order_service.store import catalogue, orders
from product_service.handlers import create_product
from shop import metrics
from shop.bootstrap import Wiring, bootstrap_worker, declare_topology
from shop.cli import app as cli_app
from shop.services import SERVICES
from shop.trace import journey
from shop.worker import log_formatter
from tests.support.builders import session_keys
from tests.support.waiting import stop_process, wait_until

pytestmark = pytest.mark.usefixtures("redis_url")

DEADLINE = 60.0
CONSUMERS = [name for name, spec in SERVICES.items() if spec.handlers]


def sample(metric_text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metric_text):
        for each in family.samples:
            if each.name == name and all(each.labels.get(key) == value for key, value in labels.items()):
                return each.value
    raise AssertionError(f"no sample {name}{labels}")


# ---------------------------------------------------------------------------------------------------------------------
# ServiceRuntime.handle: every outcome is logged and counted
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def runtime() -> Iterator[ServiceRuntime]:
    """The order service's runtime exactly as its worker gets it (no celery, no broker involved)."""
    settings = BusSettings()
    declare_topology(settings)
    worker = bootstrap_worker("order_service", settings)
    yield worker.runtime
    worker.wiring.close()


def payment_processed(settings: BusSettings) -> tuple[Envelope, Any]:
    """For an order the order service never heard of: its handler returns without effect, quickly."""
    order_id = uuid4()
    envelope = Envelope.wrap(PaymentProcessed(order_id=order_id, payment_id=uuid4(), amount=Decimal("1.00")),
                             producer="payment_service", correlation_id=order_id, causation_id=uuid4())
    return envelope, seal(envelope, session_keys())


def test_every_outcome_gets_one_json_log_line_with_the_envelope_ids_and_is_counted(
    runtime: ServiceRuntime, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    envelope, sealed = payment_processed(runtime.settings)
    _, failing_sealed = payment_processed(runtime.settings)
    handler = runtime.handlers["PaymentProcessed"]

    def fail_with(exc: Exception) -> Callable[..., None]:
        def handle(*_: Any) -> None:
            raise exc
        return handle

    with caplog.at_level(logging.INFO, logger=MESSAGE_LOG.name):
        assert runtime.handle(Delivery(sealed.envelope, sealed.signature)).outcome == "handled"
        assert runtime.handle(Delivery(sealed.envelope, sealed.signature)).outcome == "duplicate"
        assert runtime.handle(Delivery(sealed.envelope, "0" * 64)).outcome == "dead-lettered"
        runtime.handlers["PaymentProcessed"] = fail_with(TransientError("gateway timeout"))
        retried = runtime.handle(Delivery(failing_sealed.envelope, failing_sealed.signature, retries=0))
        assert retried.outcome == "retried" and isinstance(retried.error, TransientError)
        assert retried.countdown == pytest.approx(runtime.settings.retry_backoff)
        runtime.handlers["PaymentProcessed"] = fail_with(redis.ConnectionError("Redis went away"))
        requeued = runtime.handle(Delivery(failing_sealed.envelope, failing_sealed.signature))
        assert requeued.outcome == "requeued" and isinstance(requeued.error, redis.ConnectionError)
        runtime.handlers["PaymentProcessed"] = handler
        assert runtime.handle(Delivery("not json", "nor a signature")).outcome == "dead-lettered"

    records = [record for record in caplog.records if record.name == MESSAGE_LOG.name]
    assert [record.outcome for record in records] == [
        "handled", "duplicate", "dead-lettered", "retried", "requeued", "dead-lettered"]
    line = json.loads(log_formatter("order_service").format(records[0]))
    assert line["service"] == "order_service" and line["outcome"] == "handled" and line["level"] == "INFO"
    assert line["event_type"] == "PaymentProcessed"
    assert line["event_id"] == str(envelope.event_id)
    assert line["correlation_id"] == str(envelope.correlation_id)
    assert line["causation_id"] == str(envelope.causation_id)
    assert 0 < line["duration_ms"] < 10_000
    assert json.loads(log_formatter("order_service").format(records[-1]))["event_id"] is None

    runtime.observer.metrics.flush(metrics_sink(redis_client, "order_service"))
    text = metrics.render(redis_client, SERVICES.values())
    for outcome, count in (("handled", 1), ("duplicate", 1), ("dead-lettered", 2), ("retried", 1), ("requeued", 1)):
        assert sample(text, "shop_messages_total", service="order_service", outcome=outcome) == count, outcome
    assert sample(text, "shop_messages_failed_total", service="order_service") == 4
    assert sample(text, "shop_handle_seconds_count", service="order_service") == 6
    assert sample(text, "shop_handle_seconds_bucket", service="order_service", le="+Inf") == 6
    assert sample(text, "shop_dead_letters", service="order_service") == 2
    assert sample(text, "shop_messages_total", service="payment_service", outcome="handled") == 0


def test_counters_add_up_over_flushes_and_survive_a_failed_one(runtime: ServiceRuntime,
                                                               redis_client: redis.Redis) -> None:
    counters = runtime.observer.metrics
    sink = metrics_sink(redis_client, "order_service")
    counters.observe("handled", 0.002)
    broken = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    with pytest.raises(redis.RedisError):
        counters.flush(metrics_sink(broken, "order_service"))
    counters.observe("handled", 0.003)
    counters.flush(sink)
    counters.observe("handled", 20.0)
    counters.flush(sink)

    text = metrics.render(redis_client, SERVICES.values())
    assert sample(text, "shop_messages_total", service="order_service", outcome="handled") == 3
    assert sample(text, "shop_handle_seconds_bucket", service="order_service", le="0.0025") == 1
    assert sample(text, "shop_handle_seconds_bucket", service="order_service", le="0.005") == 2
    assert sample(text, "shop_handle_seconds_bucket", service="order_service", le="10.0") == 2
    assert sample(text, "shop_handle_seconds_sum", service="order_service") == pytest.approx(20.005)


# ---------------------------------------------------------------------------------------------------------------------
# A real run: workers, an order, its trace, their metrics and logs
# ---------------------------------------------------------------------------------------------------------------------
def test_trace_follows_an_order_across_the_workers_and_metrics_count_it(
    redis_client: redis.Redis, wiring: Wiring, start_worker: Callable[..., subprocess.Popen], tmp_path: Path
) -> None:
    declare_topology(wiring.settings)
    log_path = tmp_path / "order_service.log"
    with log_path.open("w") as log_file:  # this one worker's stderr: its JSON lines
        order_worker = subprocess.Popen([sys.executable, "-m", "shop", "worker", "order_service"], env=os.environ,
                                        stderr=log_file, start_new_session=True)
    try:
        for service in CONSUMERS:
            if service != "order_service":
                start_worker(service)
        uow = wiring.unit_of_work("product_service")
        create_product(uow, product_id="lamp", name="Lamp", price=Decimal("49.90"), stock=10)
        wiring.commit(uow)
        wait_until(lambda: catalogue(wiring.unit_of_work("order_service")).get("lamp"), DEADLINE,
                   message="the lamp in the order service's catalogue")
        uow = wiring.unit_of_work("order_service")
        order = place_order(uow, customer_id="kim", items=[OrderItem(product_id="lamp", quantity=1)],
                            payment_method="card")
        wiring.commit(uow)
        wait_until(lambda: (o := orders(wiring.unit_of_work("order_service")).get(order.id)) and o.notified_at,
                   DEADLINE, message="the order notified")

        hops = journey(wiring.event_log, str(order.id))
        path = [(hop.type, hop.producer) for hop in hops]
        expected = [("OrderCreated", "order_service"), ("PaymentProcessed", "payment_service"),
                    ("OrderConfirmed", "order_service"), ("NotificationSent", "notification_service")]
        assert [step for step in path if step in expected] == expected, path
        assert hops[0].type == "OrderCreated" and hops[0].cause is None
        for hop in hops[1:]:
            assert hop.cause is not None and hop.cause.event_id == hop.causation_id
            assert 0 <= hop.latency_ms < DEADLINE * 1000

        result = CliRunner().invoke(cli_app, ["trace", str(order.id)],
                                    env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        for event_type, producer in expected:
            assert event_type in result.output and producer in result.output
        missing = CliRunner().invoke(cli_app, ["trace", str(uuid4())])
        assert missing.exit_code == 1

        def counted() -> str | None:
            text = metrics.render(redis_client, SERVICES.values())
            handled = {name: sample(text, "shop_messages_total", service=name, outcome="handled") for name in
                       ("order_service", "payment_service", "notification_service")}
            return text if all(handled.values()) else None

        text = wait_until(counted, DEADLINE, message="every worker's counters flushed")
        assert sample(text, "shop_handle_seconds_count", service="payment_service") >= 1

        def order_lines() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
            return [line for line in lines if line.get("correlation_id") == str(order.id)]

        lines = wait_until(lambda: len(order_lines()) >= 2 and order_lines(), DEADLINE, message="JSON log lines")
        assert {line["event_type"] for line in lines} >= {"PaymentProcessed", "NotificationSent"}
        assert all(line["service"] == "order_service" and line["outcome"] == "handled" for line in lines)
    finally:
        stop_process(order_worker)


def test_the_trace_filter_reads_the_whole_log_slice_by_slice(redis_client: redis.Redis) -> None:
    wanted, other = str(uuid4()), str(uuid4())
    for index in range(7):
        correlation_id = wanted if index % 3 == 0 else other
        envelope = {"event_id": str(uuid4()), "type": f"E{index}", "correlation_id": correlation_id}
        redis_client.xadd(Keys.event_log(), {"type": envelope["type"], "correlation_id": correlation_id,
                                             "envelope": json.dumps(envelope), "signature": ""})

    event_log = RedisEventLog(redis_client)
    assert [e["type"] for e in event_log.of(wanted, slice_length=2)] == ["E0", "E3", "E6"]
    assert event_log.of(str(uuid4()), slice_length=2) == []
