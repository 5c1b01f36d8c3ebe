"""A bare machine: no REDIS_URL and nothing on the default port, so `shop up`/`shop demo` start an embedded Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from shop import embedded_redis


def test_without_a_configured_or_running_redis_an_embedded_one_is_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("SHOP_REDIS_URL", raising=False)
    nobody_listens = f"redis://127.0.0.1:{embedded_redis.free_port()}/0"
    monkeypatch.setattr(embedded_redis, "DEFAULT_REDIS_URL", nobody_listens)

    url, embedded = embedded_redis.choose_broker(tmp_path)
    try:
        assert embedded is not None and url != nobody_listens
        client = redis.Redis.from_url(url)
        assert client.ping()
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert (tmp_path / "redis").is_dir()
    finally:
        if embedded:
            embedded.stop()


def test_a_configured_redis_that_does_not_answer_is_an_error_not_a_silent_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{embedded_redis.free_port()}/0")
    with pytest.raises(ConnectionError, match="does not answer"):
        embedded_redis.choose_broker(tmp_path)
