"""Configuration of the bus, read from the environment (prefix `SHOP_`, plus the conventional `REDIS_URL` and
`BROKER_URL`).

One class, so every process (workers, API, CLI, tests) agrees on queue names, limits and keys.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class BusSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_", extra="ignore")

    # The field has a default: the pydantic plugin flags any non-literal alias as required (pydantic#11717).
    redis_url: str = Field(  # type: ignore[pydantic-alias]
        DEFAULT_REDIS_URL,
        validation_alias=AliasChoices("REDIS_URL", "SHOP_REDIS_URL"),
        description="Broker and stores. Password/ACL user go in the URL (redis://user:pass@host:port/db); "
        "rediss:// enables TLS with certificate checks on (see `redis_ssl_cert_reqs`).",
    )
    broker_url: str = Field(  # type: ignore[pydantic-alias]  # has a default, as above
        "",
        validation_alias=AliasChoices("BROKER_URL", "SHOP_BROKER_URL"),
        description="Where messages travel; empty = `redis_url`. amqp://user:pass@host:5672/vhost runs on RabbitMQ "
        "(native exchanges and dead-lettering); stores, inbox, outbox, dead letters and event log stay in Redis.",
    )
    amqp_prefix: str = Field(
        "", description="prefix of every RabbitMQ exchange and queue this shop declares (several shops or test runs "
        "on one vhost)"
    )
    redis_ssl_cert_reqs: str = Field("required", description="for rediss://: required | optional | none")
    keys_dir: Path | None = Field(None, description="the services' key pairs (`<service>.key` private, `<service>.pub` "
                                  "public; `shop keys generate`); default <var_dir>/keys")
    max_message_bytes: int = Field(64 * 1024, description="larger envelopes are dead-lettered unread")
    dead_letter_body_bytes: int = Field(
        64 * 1024, description="a dead letter keeps at most this much of its message (with its size and SHA-256)")
    dead_letter_cap: int = Field(
        10_000, description="dead letters kept per service: beyond it the oldest are evicted (and counted)")
    visibility_timeout: float = Field(
        60.0,
        description="kombu's redelivery of an unacknowledged message, for consumers without a taken list (service "
        "workers keep one and put back what they held when they restart)",
    )
    prefetch_multiplier: int = 4
    worker_pool: str = "solo"
    pipelined_commits: bool = Field(
        True, description="a solo worker on the Redis store beside the Redis broker sends each commit without waiting "
        "for its reply and handles the next message meanwhile (events/adapters/redis/pipelined.py)")
    max_retries: int = Field(4, description="transient failures are retried this often before dead-lettering")
    retry_backoff: float = Field(0.2, description="first retry delay in seconds; doubles each attempt")
    max_deliveries: int = Field(
        5, description="deliveries whose worker may have died with them before a message is treated as poison"
    )
    redeliver_after: float = Field(
        120.0, description="seconds after which the outbox relay re-sends a message its consumer has not settled"
    )
    event_log_length: int = Field(200_000, description="events kept (approximately) in the event log stream")
    inbox_ttl: int = Field(7 * 24 * 3600, description="seconds a handled event id is remembered for deduplication")
    topology_refresh: float = Field(2.0, description="seconds a publisher caches the routing table")
    metrics_interval: float = Field(1.0, description="seconds between two flushes of a worker's counters")
    heartbeat_interval: float = Field(
        2.0, description="seconds between two heartbeats of a worker (`shop status` counts it live for 3 of them)")
    worker_remote_control: bool = Field(
        False, description="celery's remote control (inspect, Flower, `celery control`): anyone who can write to the "
        "broker could then stop a consumer, so off unless asked for")
    var_dir: Path = Field(Path("var"), description="where local files (notification log, embedded Redis) live")
    fault_injection: bool = Field(
        False, description="enables test-only faults (card_slow, card_crash, crash_at); never in production"
    )
    crash_at: str = Field(
        "", description="with fault_injection: '<before_commit|after_commit>:<EventType>' or 'after_take:<service>'"
    )

    @model_validator(mode="after")
    def _broker_defaults_to_redis(self) -> BusSettings:
        if not self.broker_url:
            self.broker_url = self.redis_url
        return self

    @property
    def keys_path(self) -> Path:
        return self.keys_dir or self.var_dir / "keys"

    @property
    def relay_interval(self) -> float:
        """Seconds between two passes of a relay (and of a store's housekeeping): a quarter of `redeliver_after`, so
        what is due is sent again soon after it is due, at least half a second."""
        return max(0.5, self.redeliver_after / 4)


BESIDE_THE_BROKER = "redis"
"""A store URL meaning "the Redis store in REDIS_URL", whose commit script pushes the messages itself."""


class StoreSettings(BaseSettings):
    """Where each service keeps its documents, inbox, outbox and dead letters: one URL per service
    (`SHOP_ORDER_DATABASE_URL`, ...), else `SHOP_DATABASE_URL`, in which `{service}` and `{var_dir}` are filled in.

    `sqlite:///...` a file per service (the default: five files under `var/db/`); `postgresql://...` a database per
    service; `redis` the store beside the Redis broker (REDIS_URL), the fast option with its atomic commit; any other
    `redis://` URL a Redis of the service's own (then with an outbox, like a SQL database)."""

    model_config = SettingsConfigDict(env_prefix="SHOP_", extra="ignore")

    database_url: str = Field("sqlite:///{var_dir}/db/{service}.sqlite3",
                              description="every service's store, unless its own URL is set")
    order_database_url: str | None = None
    payment_database_url: str | None = None
    notification_database_url: str | None = None
    user_database_url: str | None = None
    product_database_url: str | None = None
    monolith_database_url: str = Field("sqlite:///{var_dir}/db/monolith.sqlite3",
                                       description="the monolith's one database (`shop monolith`)")

    def url_for(self, service: str, var_dir: Path) -> str:
        own = getattr(self, f"{service.removesuffix('_service')}_database_url", None)
        return _fill(own or self.database_url, service, var_dir)

    def monolith_url(self, var_dir: Path) -> str:
        return _fill(self.monolith_database_url, "monolith", var_dir)


def _fill(url: str, service: str, var_dir: Path) -> str:
    return url.replace("{service}", service).replace("{var_dir}", str(var_dir))
