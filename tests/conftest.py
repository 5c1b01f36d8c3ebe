"""Shared fixtures. Tests that touch Redis use database 11 of the Redis at TEST_REDIS_URL (default the local one)
and flush it before each test, so they never see the demo's data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import stop_process

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


@pytest.fixture
def redis_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"these tests need Redis at {TEST_REDIS_URL} (.ci/run starts one)")
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
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
def start_worker(redis_url: str) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `shop worker SERVICE` (the command `shop up` and the compose file run) with the test's environment."""
    started: list[subprocess.Popen] = []

    def start(service: str, **extra_env: str) -> subprocess.Popen:
        env = {**os.environ, **extra_env}
        process = subprocess.Popen([sys.executable, "-m", "shop", "worker", service], env=env, start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process)
