"""Key names: the one place that says where things live in Redis."""

from __future__ import annotations

from uuid import UUID


class Keys:
    @staticmethod
    def document(service: str, collection: str, key: str) -> str:
        return f"shop:{service}:{collection}:{key}"

    @staticmethod
    def inbox(service: str, event_id: UUID | str) -> str:
        return f"shop:{service}:inbox:{event_id}"

    @staticmethod
    def deliveries(service: str, event_id: UUID | str) -> str:
        return f"shop:{service}:deliveries:{event_id}"

    @staticmethod
    def dead_letters(service: str) -> str:
        return f"shop:deadletter:{service}"

    @staticmethod
    def worker(service: str, node: str) -> str:
        """A live worker's heartbeat (expires unless renewed): what `shop status` counts."""
        return f"shop:worker:{service}:{node}"

    @staticmethod
    def dead_letters_age(service: str) -> str:
        """A service's dead-letter ids by the time they died (sorted set), to evict the oldest first."""
        return f"shop:deadletter-age:{service}"

    @staticmethod
    def dead_letters_evicted() -> str:
        """service -> dead letters evicted to keep within the cap (hash)."""
        return "shop:deadletter-evicted"

    @staticmethod
    def outbox(queue: str) -> str:
        """A queue's outbox: every message pushed to the queue, until its consumer settles it (id -> message). With
        RabbitMQ as the broker, `outbox(AMQP_OUTBOX)` holds the committed events not yet confirmed by it."""
        return f"shop:outbox:{queue}"

    @staticmethod
    def outbox_schedule(queue: str) -> str:
        """When to check on each outbox entry (sorted set id -> due time); always `outbox(queue)` + ':due'."""
        return f"shop:outbox:{queue}:due"

    OUTBOX_PATTERN = "shop:outbox:{queue}"
    """`outbox` as a pattern, for the consuming channel's ack (events/adapters/redis/kombu_channel.py)."""

    @staticmethod
    def event_log() -> str:
        return "shop:eventlog"

    @staticmethod
    def relayed(queue: str) -> str:
        return f"shop:stats:{queue}:relayed"

    @staticmethod
    def retries(service: str) -> str:
        return f"shop:stats:{service}:retries"

    @staticmethod
    def metrics(service: str) -> str:
        return f"shop:metrics:{service}"

    @staticmethod
    def failpoint(service: str, point: str, once_per: str) -> str:
        """Fault injection only: marks a failpoint as fired, so a crash test's worker dies once per message."""
        return f"shop:failpoint:{service}:{point}:{once_per}"

    @staticmethod
    def unacked(service: str, node: str) -> dict[str, str]:
        """kombu's bookkeeping of delivered-but-unacknowledged messages, for a consumer that keeps no taken list
        (every service worker keeps one: `taken`). Per service and node, so one service's visibility timeout never
        applies to another's."""
        return {
            "unacked_key": f"shop:{service}:unacked:{node}",
            "unacked_index_key": f"shop:{service}:unacked_index:{node}",
            "unacked_mutex_key": f"shop:{service}:unacked_mutex:{node}",
        }

    @staticmethod
    def taken(service: str, node: str) -> str:
        """Messages a worker node took off its queue and has not acknowledged. The take is an atomic move into this
        list and the ack removes them (events/adapters/redis/kombu_channel.py), so a worker or Redis dying at any
        point leaves the message here or in its queue; the node puts it back when it reconnects."""
        return f"shop:{service}:taken:{node}"
