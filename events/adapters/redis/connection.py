"""Connections to Redis, with TLS certificate checks on whenever the URL says rediss://."""

from __future__ import annotations

import ssl
from typing import Any

import redis

from events.settings import BusSettings


def redis_client(settings: BusSettings, url: str | None = None, single_connection: bool = False) -> redis.Redis:
    """`single_connection`: every command of the client goes through one connection, under a lock, instead of taking
    one from the pool and giving it back (a fifth of what a command costs the client: a worker's deliveries run one
    at a time, its few background threads wait their turn). Pipelines still take theirs from the pool."""
    options: dict[str, Any] = {"health_check_interval": 30, "single_connection_client": single_connection}
    url = url or settings.redis_url
    if url.startswith("rediss://"):
        options["ssl_cert_reqs"] = settings.redis_ssl_cert_reqs
    return redis.Redis.from_url(url, **options)


def kombu_ssl(settings: BusSettings) -> dict[str, Any] | None:
    """rediss:// without explicit `ssl_cert_reqs` would skip certificate checks (kombu's default): always pass it."""
    if not settings.redis_url.startswith("rediss://"):
        return None
    return {"ssl_cert_reqs": getattr(ssl, f"CERT_{settings.redis_ssl_cert_reqs.upper()}")}


def text(value: bytes | str) -> str:
    """A reply as text: our clients answer bytes (redis-py types every reply as bytes or str)."""
    return value.decode() if isinstance(value, bytes) else value
