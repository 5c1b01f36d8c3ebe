"""A service's handlers inside a celery worker: one task per service, configured for at-least-once delivery.

Celery is configured as a broker-agnostic consumer (acks_late, reject_on_worker_lost, JSON only, no results); what
differs per broker (the transport, its options, which queue to consume, how a store may fold the ack into its commit,
what to put back after a reconnection) comes from the broker adapter's `BrokerHooks`. The task itself takes anything,
so that a malformed message reaches the dead-letter store through `ServiceRuntime.handle` instead of failing inside
celery and being acknowledged; `DeadLetteringConsumer` does the same for messages celery cannot even decode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from celery import Celery
from celery.exceptions import Reject, Retry
from celery.worker.consumer import Consumer
from kombu import Queue

from events.bus import ServiceSpec
from events.runtime.consumer import Delivery, ServiceRuntime
from events.settings import BusSettings

CONSUMER_CLASS = f"{__name__}:DeadLetteringConsumer"


class BrokerHooks(Protocol):
    """What the worker needs from the broker adapter."""

    def configure(self, app: Celery) -> None:
        """Transport, transport options, control exchanges: whatever this broker needs set on the app."""
        ...

    def consumer_queue(self, spec: ServiceSpec) -> Queue: ...

    def task_name(self, spec: ServiceSpec) -> str: ...

    def acknowledgement(self, request: Any) -> object | None:
        """A token the service's store may fold into its commit (None: the worker acks as usual)."""
        ...

    def acknowledged(self, request: Any) -> None:
        """The store's commit acknowledged the message: the channel's own ack must not do it again."""
        ...

    def settle(self, request: Any) -> None:
        """Acknowledge a message whose handling ended without a commit that did (a dead letter, a duplicate) now,
        not on the next turn of celery's event loop, after the rest of the worker's batch has run: a worker dying in
        between would be handed it again."""
        ...

    def on_connected(self) -> None:
        """Runs on every (re)connection of the consuming channel, before it consumes."""
        ...

    def may_have_died(self, request: Any) -> bool:
        """A redelivered message: whether its previous delivery may have died with its worker (False when the
        broker knows it never ran, or was given back), which the runtime counts to stop poison messages."""
        ...

    def decode_error_detail(self, message: Any, exc: Exception) -> str: ...


def make_celery_app(name: str, settings: BusSettings, hooks: BrokerHooks | None = None) -> Celery:
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=settings.worker_remote_control,
        task_send_sent_event=False,
    )
    if hooks is not None:
        hooks.configure(app)
    return app


def worker_app(runtime: ServiceRuntime, hooks: BrokerHooks, settings: BusSettings) -> tuple[Celery, Queue]:
    """The celery app of one service's worker, with its one task; returns it with the queue it consumes."""
    spec = runtime.spec
    app = make_celery_app(spec.name, settings, hooks)
    queue = hooks.consumer_queue(spec)
    app.conf.task_queues = [queue]
    app.conf.task_default_queue = queue.name
    app.conf.worker_consumer = CONSUMER_CLASS
    app.shop_runtime = runtime  # read back by DeadLetteringConsumer
    app.shop_hooks = hooks

    def handle_event(task: Any, *args: Any, **kwargs: Any) -> str:
        envelope, signature = kwargs.pop("envelope", None), kwargs.pop("signature", None)
        if args:
            kwargs["args"] = list(args)
        request = task.request
        decision = runtime.handle(Delivery(
            envelope, signature, kwargs, retries=request.retries,
            redelivered=bool((request.delivery_info or {}).get("redelivered")),
            may_have_died=hooks.may_have_died(request),
            acknowledgement=hooks.acknowledgement(request), trace=trace_headers(request),
        ))
        if decision.acknowledged:
            hooks.acknowledged(request)
        elif decision.outcome in ("dead-lettered", "duplicate"):
            hooks.settle(request)
        if decision.outcome == "retried":
            # Back to this queue only: celery would otherwise re-send to the delivery's exchange and routing key,
            # which on RabbitMQ means a copy for every subscriber of the event.
            try:
                raise task.retry(exc=decision.error, countdown=decision.countdown, max_retries=None, queue=queue)
            except Retry:
                raise
            except Exception as exc:  # the retry could not be published (broker down, out of memory)
                # Celery would count the task failed and acknowledge the message: give it back instead.
                raise Reject(exc, requeue=True) from exc
        if decision.outcome == "requeued":
            raise Reject(decision.error, requeue=True)
        return decision.outcome

    app.task(name=hooks.task_name(spec), bind=True, shared=False)(handle_event)
    return app, queue


def trace_headers(request: Any) -> dict[str, str]:
    """The W3C trace headers of a task's message: celery keeps a message's headers of its own in `request.headers`."""
    custom = getattr(request, "headers", None) or {}
    return {name: str(custom[name]) for name in ("traceparent", "tracestate") if name in custom}


class DeadLetteringConsumer(Consumer):
    """Celery acknowledges (deletes) a message it cannot decode or that is not a known task. Dead-letter it first,
    with the raw body, so nothing malformed disappears; and give the broker adapter its reconnection hook."""

    def _dead_letter(self, message: Any, reason: str, detail: str) -> None:
        runtime: ServiceRuntime | None = getattr(self.app, "shop_runtime", None)
        if runtime is None:
            return
        try:
            body = message.body.decode(errors="replace") if isinstance(message.body, bytes) else message.body
        except Exception:  # noqa: BLE001 - whatever the body is, it is stored as text
            body = repr(message.body)
        runtime.dead_letters.add(
            runtime.spec.name, reason, detail, {"raw_body": str(body), "headers": _safe(message.headers)}, 1
        )

    def connection_for_read(self, heartbeat: Any = None) -> Any:
        connection = self.ensure_connected(self.app.connection_for_read(heartbeat=heartbeat))
        hooks: BrokerHooks | None = getattr(self.app, "shop_hooks", None)
        if hooks is not None:
            hooks.on_connected()
        return connection

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        hooks: BrokerHooks | None = getattr(self.app, "shop_hooks", None)
        detail = hooks.decode_error_detail(message, exc) if hooks is not None else repr(exc)
        self._dead_letter(message, "undecodable message", detail)
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "not a task message", "")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, "unknown task", repr(exc))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, "invalid task message", repr(exc))
        super().on_invalid_task(body, message, exc)


def _safe(headers: Mapping[str, Any] | Any) -> Any:
    try:
        json.dumps(headers)
        return headers
    except (TypeError, ValueError):
        return repr(headers)
