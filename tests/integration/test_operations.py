"""What operators' tools see of a running shop, against a real Redis: each API's /health/ready (and a 503 when its
store does not answer), `shop health` for a worker container's healthcheck, and `--json` on `shop status`, `shop trace`
and `shop dlq list`, run as the processes a script would run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import redis

from events.adapters.redis.worker import heartbeat
from events.adapters.sql.engine import engines
from events.adapters.sql.store import SqlStore
from events.catalog import StockLevel, StockReserved
from events.envelope import Envelope
from events.http import NotReady
from events.messaging import Periodic
from events.settings import BusSettings
from shop.bootstrap import (
    Wiring,
    answers,
    bootstrap_api,
    bootstrap_monolith,
    bootstrap_worker,
    declare_topology,
    readiness,
    ready_when,
)
from shop.monolith import create_monolith_app, monolith_edge
from shop.services import APIS, CONSUMERS
from tests.support.brokers import Broker
from tests.support.builders import place, session_keys
from tests.support.waiting import stop_process, wait_until

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency; not ours to fix
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: refused at once


def run_shop(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m shop ARGS` as a script runs it: stdout a pipe, not a terminal."""
    environment = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "shop", *args], env={**environment, **env}, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def no_relay_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """bootstrap_api starts its store's relay on a thread that runs for good: not in a test."""
    monkeypatch.setattr(Periodic, "start", lambda self: self)


# ---------------------------------------------------------------------------------------------------------------------
# /health/ready
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", list(APIS))
def test_each_api_is_ready_when_its_store_and_the_broker_answer(redis_url: str, no_relay_thread: None,
                                                                service: str) -> None:
    client = TestClient(bootstrap_api(service))
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_an_api_whose_store_does_not_answer_is_live_but_not_ready(redis_url: str, no_relay_thread: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_ORDER_DATABASE_URL", f"redis://:secret@{UNREACHABLE}/0")
    client = TestClient(bootstrap_api("order_service"))

    assert client.get("/health/live").status_code == 200
    response = client.get("/health/ready")

    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "the store of order_service does not answer (ConnectionError)"
    assert "secret" not in response.text and UNREACHABLE not in response.text


def test_a_sql_store_is_ready_when_select_1_answers(tmp_path: Path) -> None:
    up = SqlStore(engines(f"sqlite:///{tmp_path / 'up.sqlite3'}"), BusSettings(), outbox=False)
    down = SqlStore(engines(f"postgresql://shop@{UNREACHABLE}/shop"), BusSettings(), outbox=False)
    ready_when({"the store": answers(up)})()
    with pytest.raises(NotReady, match=r"^the store of payment_service does not answer \(OperationalError\)$"):
        ready_when({"the store": answers(up), "the store of payment_service": answers(down)})()


def test_readiness_asks_the_broker_it_runs_on(bus: Broker, wiring: Wiring) -> None:
    readiness(wiring, "order_service")()
    if not bus.is_amqp:
        return
    cut_off = replace(wiring, settings=wiring.settings.model_copy(
        update={"broker_url": f"amqp://guest:secret@{UNREACHABLE}//"}))
    with pytest.raises(NotReady, match=r"^RabbitMQ does not answer \((ConnectionRefusedError|OperationalError)\)$"):
        readiness(cut_off, "order_service")()


def test_a_broker_side_redis_that_does_not_answer_is_named(wiring: Wiring) -> None:
    with pytest.raises(NotReady, match=r"^Redis does not answer \(ConnectionError\)$"):
        ready_when({"the store": wiring.redis.ping, "Redis": redis.Redis.from_url(f"redis://{UNREACHABLE}/0").ping})()


def test_the_monolith_is_ready_when_its_database_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOP_MONOLITH_DATABASE_URL", f"sqlite:///{tmp_path / 'monolith.sqlite3'}")
    monkeypatch.setenv("SHOP_GATEWAY_LEDGER_PATH", str(tmp_path / "gateway.sqlite3"))
    bus = bootstrap_monolith(BusSettings(var_dir=tmp_path))
    client = TestClient(create_monolith_app(bus, monolith_edge(session_keys(), bus)))
    assert client.get("/health/ready").status_code == 200
    bus.store.engines.dispose()
    (tmp_path / "monolith.sqlite3").unlink()
    (tmp_path / "monolith.sqlite3").mkdir()  # a database that can no longer be opened
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["detail"] == "the database does not answer (OperationalError)"


# ---------------------------------------------------------------------------------------------------------------------
# shop health <service>
# ---------------------------------------------------------------------------------------------------------------------
def test_shop_health_answers_for_this_hosts_worker_or_any_with_one_line(redis_client: redis.Redis) -> None:
    here, elsewhere = f"payment_service@{socket.gethostname()}", "payment_service@another-host"

    missing = run_shop("health", "payment_service")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.splitlines() == [
        f"no heartbeat of {here}: not started yet, stopped, hung or cut off from Redis"]
    assert run_shop("health", "payment_service", "--any").returncode == 1

    heartbeat(redis_client, "payment_service", elsewhere, ttl=60)()
    other = run_shop("health", "payment_service")
    assert other.returncode == 1 and other.stderr.strip().endswith(f"(live: {elsewhere})")
    assert run_shop("health", "payment_service", "--any").returncode == 0
    assert run_shop("health", "payment_service", "--name", elsewhere).returncode == 0
    assert run_shop("health", "order_service", "--any").returncode == 1, "another service's worker counts for nothing"

    heartbeat(redis_client, "payment_service", here, ttl=60)()
    alive = run_shop("health", "payment_service")
    assert alive.returncode == 0 and alive.stderr == ""
    assert len(alive.stdout.splitlines()) == 1 and alive.stdout.startswith(f"{here} is alive (last heartbeat ")


def test_shop_health_refuses_a_service_without_workers_and_an_unreachable_redis_in_one_line(redis_url: str) -> None:
    assert run_shop("health", "user_service").returncode != 0
    down = run_shop("health", "payment_service", REDIS_URL=f"redis://:secret@{UNREACHABLE}/0")
    assert down.returncode == 1 and len(down.stderr.splitlines()) == 1
    assert down.stderr.startswith("shop: ConnectionError") and "secret" not in down.stderr


def test_shop_health_sees_a_real_worker_start_and_stop(redis_client: redis.Redis,
                                                       start_worker: Callable[..., subprocess.Popen]) -> None:
    worker = start_worker("notification_service")
    alive = wait_until(lambda: (result := run_shop("health", "notification_service")).returncode == 0 and result, 60,
                       interval=0.5, message="the worker's heartbeat")
    assert alive.stdout.startswith(f"notification_service@{socket.gethostname()} is alive")
    stop_process(worker)  # a clean stop deletes its heartbeat
    wait_until(lambda: run_shop("health", "notification_service").returncode == 1, 30, interval=0.5,
               message="the heartbeat gone")


# ---------------------------------------------------------------------------------------------------------------------
# --json, and tables whole when piped
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def state(wiring: Wiring) -> dict[str, Any]:
    """A dead letter of the payment service, and an order whose OrderCreated caused a StockReserved, in the log (and
    in their subscribers' queues)."""
    declare_topology(wiring.settings)
    record = wiring.dead_letters.of("payment_service").add(
        "payment_service", "retries exhausted", "gateway down " + "x" * 100, {"raw_body": "kept"}, 5)
    order = place(wiring)
    created = wiring.event_log.of(str(order.id))[0]
    reserved = StockReserved(order_id=order.id, customer_id="alice", total=Decimal("25.00"), payment_method="card",
                             lines=(StockLevel(product_id="book", quantity=1, stock=99, revision=2),))
    envelope = Envelope.wrap(reserved, producer="product_service", correlation_id=order.id,
                             causation_id=UUID(created["event_id"]))
    wiring.publish(envelope)
    return {"record": record, "order_id": str(order.id), "created": created["event_id"],
            "reserved": str(envelope.event_id)}


def one_json_document(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # the whole of stdout, nothing around it


def test_shop_status_json(state: dict[str, Any], redis_client: redis.Redis) -> None:
    heartbeat(redis_client, "order_service", "order_service@box-1", ttl=60)()

    report = one_json_document(run_shop("status", "--json"))

    assert report["broker"] == BusSettings().broker_url.split("@")[-1]
    assert list(report["services"]) == list(CONSUMERS)
    for name, counts in report["services"].items():
        assert counts["dead_letters"] == (1 if name == "payment_service" else 0), name
        assert counts["outbox"] is None and counts["evicted"] == 0, name
        assert counts["workers"] == (["order_service@box-1"] if name == "order_service" else []), name
    assert report["services"]["product_service"]["waiting"] == 1  # the OrderCreated, nobody consuming
    assert report["services"]["payment_service"]["waiting"] == 1  # the StockReserved
    assert report["unroutable"] == {"dead_letters": 0, "evicted": 0}


def test_shop_dlq_list_json(state: dict[str, Any]) -> None:
    listing = one_json_document(run_shop("dlq", "list", "--json"))

    record = state["record"]
    assert listing == {"count": 1, "dead_letters": [
        {key: record[key] for key in ("id", "service", "reason", "detail", "attempts", "dead_at")}]}
    assert len(listing["dead_letters"][0]["detail"]) > 60, "whole, not cut as in the table"
    assert one_json_document(run_shop("dlq", "list", "order_service", "--json")) == {"count": 0, "dead_letters": []}


def test_shop_trace_json(state: dict[str, Any]) -> None:
    journey = one_json_document(run_shop("trace", state["order_id"], "--json"))

    assert journey["order_id"] == state["order_id"]
    created, reserved = journey["events"]
    assert (created["event_id"], created["type"], created["producer"]) == (state["created"], "OrderCreated",
                                                                          "order_service")
    assert created["causation_id"] is None and created["cause_type"] is None and created["hop_ms"] is None
    assert created["offset_ms"] == 0 and "product_service" in created["handled_by"]
    assert (reserved["event_id"], reserved["type"], reserved["producer"]) == (state["reserved"], "StockReserved",
                                                                             "product_service")
    assert reserved["causation_id"] == state["created"] and reserved["cause_type"] == "OrderCreated"
    assert reserved["hop_ms"] >= 0 and reserved["hop_ms"] == reserved["offset_ms"] == journey["duration_ms"]
    assert "payment_service" in reserved["handled_by"]

    missing = run_shop("trace", str(uuid4()), "--json")
    assert missing.returncode == 1 and missing.stdout == "" and len(missing.stderr.splitlines()) == 1


def test_piped_shop_status_shows_whole_service_names(state: dict[str, Any]) -> None:
    result = run_shop("status")

    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    for name in [*CONSUMERS, "(unroutable)"]:
        assert f" {name} " in result.stdout, name
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│")}
    assert rows["payment_service"].split("│")[-3].strip() == "1", "the dead letter, in its column"


# ---------------------------------------------------------------------------------------------------------------------
# a service's processes open its own database only
# ---------------------------------------------------------------------------------------------------------------------
def test_a_services_worker_and_api_open_their_own_store_only(redis_url: str, no_relay_thread: None, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", f"sqlite:///{tmp_path}/{{service}}.sqlite3")
    worker = bootstrap_worker("payment_service")
    try:
        assert list(worker.wiring.stores) == ["payment_service"]
        assert sorted(path.name for path in tmp_path.glob("*.sqlite3")) == ["payment_service.sqlite3"]
    finally:
        worker.wiring.close()
    TestClient(bootstrap_api("order_service"))
    assert sorted(path.name for path in tmp_path.glob("*.sqlite3")) == ["order_service.sqlite3",
                                                                        "payment_service.sqlite3"]
