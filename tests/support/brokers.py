"""The two brokers as tests see them: is RabbitMQ there, what waits in a queue, and cleaning up what a test declared.

RabbitMQ tests share the broker with whatever else runs on it, so each one declares its exchanges and queues under
its own prefix (SHOP_AMQP_PREFIX) and deletes exactly those afterwards; nothing else on the broker is touched.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu import Connection

from events.adapters.amqp.broker import Topology
from events.adapters.ed25519.keyring import KeyRing
from events.adapters.redis import kombu_channel
from events.bus import ServiceSpec
from events.envelope import Envelope, open_envelope
from events.settings import BusSettings

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
"""Tests that touch Redis use this database (flushed before each test), never the demo's."""
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = ["redis", "rabbitmq"]


@functools.cache
def rabbitmq_missing() -> str | None:
    """Why the RabbitMQ variants cannot run here, or None when a broker answers at RABBITMQ_URL."""
    try:
        with Connection(RABBITMQ_URL, connect_timeout=2, transport_options={"max_retries": 0}) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable" for a skip reason
        host = RABBITMQ_URL.rsplit("@", 1)[-1]
        return f"RabbitMQ variant: no broker answers at {host} ({exc.__class__.__name__}); set TEST_RABBITMQ_URL"
    return None


def broker_env(broker: str, prefix: str) -> dict[str, str]:
    """The environment that selects `broker` for every process of a test (empty values: back to Redis)."""
    if broker == "rabbitmq":
        return {"BROKER_URL": RABBITMQ_URL, "SHOP_AMQP_PREFIX": prefix}
    return {"BROKER_URL": "", "SHOP_AMQP_PREFIX": ""}


def delete_rabbitmq_topology(prefix: str, specs: list[ServiceSpec]) -> None:
    """Delete what `declare_topology` created under `prefix` for `specs` (and nothing else)."""
    settings = BusSettings(amqp_prefix=prefix)  # only the names; the connection is RABBITMQ_URL
    with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
        Topology(settings).delete(connection, specs)


@dataclass
class Broker:
    """What a test can observe of the broker it runs on."""

    name: str
    settings: BusSettings
    client: redis.Redis
    declared: list[ServiceSpec] = field(default_factory=list)

    def declare(self, specs: list[ServiceSpec]) -> None:
        """`declare_topology`, remembering what to delete from RabbitMQ afterwards."""
        from shop.bootstrap import declare_topology

        self.declared += [spec for spec in specs if spec not in self.declared]
        declare_topology(self.settings, specs)

    @property
    def is_amqp(self) -> bool:
        return self.name == "rabbitmq"

    def queue_name(self, queue: str) -> str:
        return Topology(self.settings).queue_name(queue) if self.is_amqp else queue

    def waiting(self, queue: str) -> int:
        """Messages ready in `queue` (not counting those a worker holds)."""
        if not self.is_amqp:
            return self.client.llen(queue)
        with Connection(self.settings.broker_url) as connection:
            _, count, _ = connection.default_channel.queue_declare(self.queue_name(queue), passive=True)
            return count

    def envelopes(self, queue: str) -> list[Envelope]:
        """The envelopes waiting in `queue`, oldest first, each verified as a worker would; they stay queued."""
        return [
            open_envelope(kwargs["envelope"], kwargs["signature"], keys=KeyRing.load(self.settings.keys_path),
                          max_bytes=self.settings.max_message_bytes)[0]
            for _, kwargs in self.tasks(queue)
        ]

    def tasks(self, queue: str) -> list[tuple[str, dict]]:
        """(task name, kwargs) of each message waiting in `queue`, oldest first; they stay queued."""
        if not self.is_amqp:
            return [(message["task"], message["kwargs"]) for message in queued(self.client, queue)]
        # Take every message without acknowledging, then close the channel: RabbitMQ puts them all back, in order.
        found = []
        with Connection(self.settings.broker_url) as connection:
            channel = connection.channel()
            while (message := channel.basic_get(self.queue_name(queue), no_ack=False)) is not None:
                found.append((message.headers.get("task"), json.loads(message.body)[1]))
            channel.close()
        return found


def queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The celery messages waiting in a Redis `queue`, oldest first: {'task', 'delivery_info', 'redelivered',
    'may_have_died' (None: never put back), 'kwargs'}; they stay queued."""
    messages = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        messages.append(
            {
                "task": message["headers"].get("task"),
                "delivery_info": message["properties"].get("delivery_info"),
                "redelivered": message["headers"].get("redelivered", False),
                "may_have_died": message["headers"].get(kombu_channel.MAY_HAVE_DIED_HEADER),
                "kwargs": kwargs,
            }
        )
    return messages


def queued_envelopes(client: redis.Redis, queue: str, settings: BusSettings) -> list[Envelope]:
    """The envelopes waiting in a Redis `queue`, each verified as a worker would."""
    return [
        open_envelope(m["kwargs"]["envelope"], m["kwargs"]["signature"], keys=KeyRing.load(settings.keys_path),
                      max_bytes=settings.max_message_bytes)[0]
        for m in queued(client, queue)
    ]
