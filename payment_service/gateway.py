"""A simulated card gateway with deterministic outcomes, so tests and demos choose what happens.

Like a real gateway it takes an idempotency key (the order id): asking twice for the same key returns the first
result and never charges again. Its ledger of real charges is what the chaos run audits for double charging.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

import redis
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.bus import TransientError
from events.sqlite import use_wal


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_GATEWAY_", extra="ignore")

    limit: Decimal = Field(Decimal("10000.00"), description="orders above this are declined: insufficient funds")
    flaky_failures: int = Field(2, description="card_flaky: the gateway times out this many times, then charges")
    delay: float = Field(0.0, description="seconds every charge takes (a slow gateway, to study scaling)")
    slow_seconds: float = Field(3.0, description="card_slow (fault injection only): seconds the charge hangs")
    fault_injection: bool = Field(False, validation_alias="SHOP_FAULT_INJECTION")
    ledger_path: Path | None = Field(None, description="the gateway's own books, when they are kept in a file (the "
                                     "monolith: no Redis); default <SHOP_VAR_DIR>/db/gateway.sqlite3")


class GatewayUnavailable(TransientError):
    """The gateway timed out; the charge did not happen and may be retried."""


@dataclass(frozen=True)
class ChargeResult:
    approved: bool
    reference: str | None = None
    reason: str | None = None


class Ledger(Protocol):
    def recall(self, idempotency_key: str) -> ChargeResult | None: ...
    def record(self, idempotency_key: str, result: ChargeResult) -> ChargeResult: ...
    def count_attempt(self, idempotency_key: str) -> int: ...


class InMemoryLedger:
    def __init__(self) -> None:
        self.results: dict[str, ChargeResult] = {}
        self.charges: list[str] = []
        self.attempts: dict[str, int] = {}

    def recall(self, idempotency_key: str) -> ChargeResult | None:
        return self.results.get(idempotency_key)

    def record(self, idempotency_key: str, result: ChargeResult) -> ChargeResult:
        if idempotency_key in self.results:
            return self.results[idempotency_key]
        self.results[idempotency_key] = result
        if result.approved:
            self.charges.append(idempotency_key)
        return result

    def count_attempt(self, idempotency_key: str) -> int:
        self.attempts[idempotency_key] = self.attempts.get(idempotency_key, 0) + 1
        return self.attempts[idempotency_key]


class RedisLedger:
    """The gateway's own books (keys `shop:gateway:*`): results by idempotency key, and a list of real charges."""

    RESULTS, CHARGES, ATTEMPTS = "shop:gateway:results", "shop:gateway:charges", "shop:gateway:attempts"

    def __init__(self, client: redis.Redis,
                 lua_script: Callable[[redis.Redis, str], Callable[..., Any]] | None = None) -> None:
        """`lua_script(client, source)` registers a script (the bootstrap passes the Redis adapter's, which reads a
        refusal at the memory limit the same on every Redis version); by default, redis-py's own."""
        self.redis = client
        register = lua_script or (lambda c, source: c.register_script(source))
        self._record_once = register(client, self.RECORD_ONCE)

    def recall(self, idempotency_key: str) -> ChargeResult | None:
        raw = self.redis.hget(self.RESULTS, idempotency_key)
        return None if raw is None else _decode(raw if isinstance(raw, bytes) else raw.encode())

    # First answer wins, and a real charge is booked in the same atomic step (one round trip).
    RECORD_ONCE = """
    if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
      if ARGV[3] == '1' then redis.call('RPUSH', KEYS[2], ARGV[1]) end
      return ARGV[2]
    end
    return redis.call('HGET', KEYS[1], ARGV[1])
    """

    def record(self, idempotency_key: str, result: ChargeResult) -> ChargeResult:
        stored = self._record_once(
            keys=[self.RESULTS, self.CHARGES], args=[idempotency_key, _encode(result), int(result.approved)]
        )
        return _decode(stored)

    def count_attempt(self, idempotency_key: str) -> int:
        return int(self.redis.hincrby(self.ATTEMPTS, idempotency_key, 1))


class SqliteLedger:
    """The gateway's books in a file of its own (the monolith has no Redis): the standard library's sqlite3, one
    short transaction per call, so several processes can share the file; one connection per process, used by one
    thread at a time."""

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        use_wal(self._db, timeout_s=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, result TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS charges (key TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS attempts (key TEXT PRIMARY KEY, count INTEGER NOT NULL)")

    def recall(self, idempotency_key: str) -> ChargeResult | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM results WHERE key = ?", (idempotency_key,)).fetchone()
        return None if row is None else _decode(row[0].encode())

    def record(self, idempotency_key: str, result: ChargeResult) -> ChargeResult:
        """First answer wins, and a real charge is booked in the same transaction."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT result FROM results WHERE key = ?", (idempotency_key,)).fetchone()
            if row is not None:
                return _decode(row[0].encode())
            self._db.execute("INSERT INTO results VALUES (?, ?)", (idempotency_key, _encode(result)))
            if result.approved:
                self._db.execute("INSERT INTO charges VALUES (?)", (idempotency_key,))
            return result

    def count_attempt(self, idempotency_key: str) -> int:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO attempts VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET count = count + 1",
                             (idempotency_key,))
            return int(self._db.execute("SELECT count FROM attempts WHERE key = ?", (idempotency_key,)).fetchone()[0])

    def charges(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT key FROM charges ORDER BY rowid")]


def _encode(result: ChargeResult) -> str:
    return f"{int(result.approved)}|{result.reference or ''}|{result.reason or ''}"


def _decode(raw: bytes) -> ChargeResult:
    approved, reference, reason = raw.decode().split("|", 2)
    return ChargeResult(approved == "1", reference or None, reason or None)


class SimulatedGateway:
    def __init__(self, ledger: Ledger, settings: GatewaySettings | None = None) -> None:
        self.ledger = ledger
        self.settings = settings or GatewaySettings()

    def charge(self, idempotency_key: str, amount: Decimal, payment_method: str) -> ChargeResult:
        previous = self.ledger.recall(idempotency_key)
        if previous is not None:
            return previous
        if self.settings.delay:
            time.sleep(self.settings.delay)
        if (payment_method == "card_flaky"
                and self.ledger.count_attempt(idempotency_key) <= self.settings.flaky_failures):
            raise GatewayUnavailable(f"gateway timeout for {idempotency_key}")
        if self.settings.fault_injection:
            if payment_method == "card_slow":
                self.ledger.count_attempt(idempotency_key)  # lets a test see that the charge is under way
                time.sleep(self.settings.slow_seconds)
            elif payment_method == "card_crash":
                os._exit(70)  # a poison message: the process dies on it, every time
        if payment_method == "card_declined":
            result = ChargeResult(False, reason="card declined")
        elif amount > self.settings.limit:
            result = ChargeResult(False, reason=f"insufficient funds (limit {self.settings.limit})")
        else:
            result = ChargeResult(True, reference=f"ch_{uuid4().hex[:16]}")
        return self.ledger.record(idempotency_key, result)
