"""Shared fixtures. Tests that touch Redis use database 11 of the Redis at TEST_REDIS_URL (default the local one)
and flush it before each test, so they never see the demo's data."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from events.settings import BusSettings
from shop.bootstrap import Wiring, bootstrap
from shop.supervisor import stop_process_groups
from tests.support.brokers import (
    BROKERS,
    TEST_REDIS_URL,
    Broker,
    broker_env,
    delete_rabbitmq_topology,
    rabbitmq_missing,
)


@pytest.fixture(scope="session", autouse=True)
def service_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One key pair per service for the whole session (every process a test starts inherits SHOP_KEYS_DIR)."""
    from events.adapters.ed25519.keyring import generate
    from shop.services import SERVICES

    directory = tmp_path_factory.mktemp("keys")
    generate(directory, SERVICES)
    previous = os.environ.get("SHOP_KEYS_DIR")
    os.environ["SHOP_KEYS_DIR"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("SHOP_KEYS_DIR", None)
    else:
        os.environ["SHOP_KEYS_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def no_console() -> Iterator[None]:
    """`shop up` and `shop demo` serve the console on port 5000 unless told otherwise: the processes tests start do not
    (the console's own tests choose a free port)."""
    previous = os.environ.get("SHOP_CONSOLE_PORT")
    os.environ["SHOP_CONSOLE_PORT"] = "0"
    yield
    if previous is None:
        os.environ.pop("SHOP_CONSOLE_PORT", None)
    else:
        os.environ["SHOP_CONSOLE_PORT"] = previous


@pytest.fixture
def redis_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"these tests need Redis at {TEST_REDIS_URL} (.ci/run starts one)")
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    # The store beside the broker, unless a test chooses another (tests/e2e and tests/contract run every store).
    monkeypatch.setenv("SHOP_DATABASE_URL", "redis")
    for name in ("BROKER_URL", "SHOP_BROKER_URL", "SHOP_AMQP_PREFIX"):  # Redis unless a test asks for `bus`
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHOP_NOTIFICATION_LOG", str(tmp_path / "notifications.log"))
    monkeypatch.setenv("SHOP_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("SHOP_VISIBILITY_TIMEOUT", "4")
    monkeypatch.setenv("SHOP_RETRY_BACKOFF", "0.05")
    monkeypatch.setenv("SHOP_REDELIVER_AFTER", "8")
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str) -> BusSettings:
    return BusSettings()


@pytest.fixture
def wiring(redis_url: str) -> Iterator[Wiring]:
    """Stores, broker and dead letters as every process of the shop gets them (shop/bootstrap.py), on the test's
    Redis (and on RabbitMQ when the test also asks for `bus` first)."""
    wiring = bootstrap(BusSettings())
    yield wiring
    wiring.close()


@pytest.fixture
def start_worker(redis_url: str) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `shop worker SERVICE` (the command `shop up` and the compose file run) with the test's environment."""
    started: list[subprocess.Popen] = []

    def start(service: str, **extra_env: str) -> subprocess.Popen:
        env = {**os.environ, **extra_env}
        process = subprocess.Popen([sys.executable, "-m", "shop", "worker", service], env=env, start_new_session=True)
        started.append(process)
        return process

    yield start
    stop_process_groups(started)  # their warm shutdowns overlap instead of adding up


@pytest.fixture(params=BROKERS)
def bus(request: pytest.FixtureRequest, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    """Runs the test once per broker: Redis, then RabbitMQ (skipped with the reason when none answers). Every
    process the test starts inherits the choice through the environment; RabbitMQ names get a prefix of their own,
    deleted afterwards."""
    if request.param == "rabbitmq" and (missing := rabbitmq_missing()):
        pytest.skip(missing)
    prefix = f"test-{uuid.uuid4().hex[:8]}."
    for name, value in broker_env(request.param, prefix).items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    client = redis.Redis.from_url(redis_url)
    broker = Broker(request.param, BusSettings(), client)
    yield broker
    if broker.is_amqp:
        from shop.services import SERVICES

        delete_rabbitmq_topology(prefix, [*SERVICES.values(), *broker.declared])
    client.close()
