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
    def outbox(queue: str) -> str:
        return f"shop:outbox:{queue}"

    @staticmethod
    def outbox_schedule(queue: str) -> str:
        return f"shop:outbox:{queue}:due"

    @staticmethod
    def routes(exchange: str, event_type: str) -> str:
        """On RabbitMQ: the queues this shop bound to `event_type` (a record for display; the broker routes)."""
        return f"shop:routes:{exchange}:{event_type}"

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
    def unacked(service: str, node: str) -> dict[str, str]:
        """kombu's bookkeeping of delivered-but-unacknowledged messages, one set per worker *node*, for consumers
        that do not keep a taken list (`taken`: every service worker does). Per service, so one service's
        visibility timeout never applies to another's; per node, so a worker restarted under its name can take
        back at once what its killed predecessor held (see `ServiceRuntime.take_back_unacked`)."""
        return {
            "unacked_key": f"shop:{service}:unacked:{node}",
            "unacked_index_key": f"shop:{service}:unacked_index:{node}",
            "unacked_mutex_key": f"shop:{service}:unacked_mutex:{node}",
        }

    @staticmethod
    def taken(service: str, node: str) -> str:
        """Messages a worker node took off its queue and has not acknowledged. The take is an atomic move into this
        list and the ack removes them (see `events/consumer.py`, `guard_transport`), so a worker or Redis dying at
        any point leaves the message here or in its queue; the node puts it back when it reconnects."""
        return f"shop:{service}:taken:{node}"
