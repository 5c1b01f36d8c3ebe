"""`shop health <service>`: is this host's (this container's) worker of a service alive? The healthcheck of a worker
container.

Celery's remote control, which `celery inspect ping` needs, is off by design (anyone with broker access could stop a
consumer with it), so a worker proves it is alive the way `shop status` counts it: by its heartbeat key in Redis,
renewed every SHOP_HEARTBEAT_INTERVAL seconds and gone three intervals after the last renewal (the worker died, hangs,
or cannot reach Redis). Only Redis is asked: no store is opened, nothing is migrated or declared.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import redis

from events.adapters.redis.connection import text
from events.adapters.redis.keys import Keys
from events.adapters.redis.worker import live_workers


def default_node(service: str) -> str:
    """The node name a worker takes unless told otherwise (`shop worker --name`): `<service>@<host name>`, the
    container's own host name under compose, so each scaled replica checks its own worker."""
    return f"{service}@{socket.gethostname()}"


@dataclass(frozen=True)
class Health:
    alive: bool
    reason: str
    """one line: which worker is alive and since when it last beat, or why none counts"""


def worker_health(client: redis.Redis, service: str, node: str | None = None, any_node: bool = False) -> Health:
    """Alive when the heartbeat of `node` (default: this host's worker) has not expired; with `any_node`, when any
    worker of `service` has one."""
    nodes = live_workers(client, service)
    if any_node:
        if not nodes:
            return Health(False, f"no live worker of {service} (no heartbeat in Redis)")
        return Health(True, f"{len(nodes)} live worker(s) of {service}: {', '.join(nodes)}")
    node = node or default_node(service)
    beat = client.get(Keys.worker(service, node))
    if beat is None:
        others = f" (live: {', '.join(nodes)})" if nodes else ""
        return Health(False, f"no heartbeat of {node}: not started yet, stopped, hung or cut off from Redis{others}")
    age = max(0.0, time.time() - float(text(beat)))
    return Health(True, f"{node} is alive (last heartbeat {age:.1f} s ago)")
