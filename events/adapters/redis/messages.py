"""The celery task message a worker of a queue executes, rendered as kombu's Redis transport stores it."""

from __future__ import annotations

from celery import Celery
from kombu.serialization import dumps

from events.adapters.redis import kombu_channel
from events.messaging import OutgoingMessage
from events.settings import BusSettings


def task_name(queue: str) -> str:
    """One task per queue: a message names the one service it is for."""
    return f"{queue}.handle_event"


class MessageFactory:
    """Celery protocol 2, JSON, addressed through the default exchange to one queue, so that any redelivery or
    retry goes back to that queue only."""

    def __init__(self, settings: BusSettings) -> None:
        self._app = Celery("shop.messages", set_as_current=False)
        self._connection = kombu_channel.rendering_connection(settings.redis_url)
        self._channel = self._connection.default_channel

    def build(self, queue: str, message: OutgoingMessage, event_id: str) -> tuple[str, str]:
        """(Redis list key, serialized message) for one delivery of `message` to `queue`."""
        task = self._app.amqp.as_task_v2(
            f"{event_id}:{queue}", task_name(queue), args=(),
            kwargs={"envelope": message.envelope, "signature": message.signature}, ignore_result=True,
            # celery would otherwise build a safe repr of the whole signed envelope for every message
            argsrepr="()", kwargsrepr="{envelope, signature}",
        )
        task.headers.update(message.headers)  # the trace context: celery hands custom headers to the task's request
        content_type, content_encoding, body = dumps(task.body, serializer="json")
        return kombu_channel.render(self._channel, queue, body, content_type, content_encoding, task.headers,
                                    task.properties)

    def close(self) -> None:
        self._connection.release()
