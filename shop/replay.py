"""`shop replay <service>`: feed a service's projections the history in the event log.

What it is for: a projection added after the events it needs were published (a new service, or a new read model in
an old one), or one whose documents were lost or fixed by hand. Only the service's projection handlers run (see
`ServiceSpec.projections`): they publish nothing and call nothing, so the past is not acted on again, only read.

How it stays harmless:
* each event goes through a unit of work of the service (its own documents) whose inbox is a separate one,
  `<service>.replay`: events the service handled live are still replayed, and a second replay skips what the first
  did (a replay interrupted half-way resumes);
* projection handlers keep the newest revision they saw, so replaying over live documents, or alongside the live
  worker, cannot roll anything back; a conflict with the live worker is retried on fresh state;
* `rebuild` first deletes the projection's documents and the replay inbox: the projection as history alone says.

The log is read in order (one Redis stream, appended by the same atomic step that publishes), in pages, and each
entry's signature is checked as a consumer would: the log is an input like any queue.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis

from events.bus import BoundHandler, ServiceSpec, bind_handlers
from events.envelope import Envelope, RejectedMessage, open_envelope
from events.keys import Keys
from events.redis_bus import RedisPublisher
from events.settings import BusSettings
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate

PAGE = 500
CONFLICT_ATTEMPTS = 10


@dataclass
class ReplayReport:
    service: str
    read: int = 0
    replayed: int = 0
    already_replayed: int = 0
    rejected: int = 0
    rebuilt: bool = False


def replay_inbox(service: str) -> str:
    return f"{service}.replay"


def projection_handlers(spec: ServiceSpec) -> dict[str, BoundHandler]:
    """{event type: handler} of every projection of `spec`. Projections need no dependencies by design."""
    if not spec.projections:
        raise ValueError(f"{spec.name} keeps no projection: nothing to replay")
    handlers: dict[str, BoundHandler] = {}
    for projection in spec.projections:
        handlers.update(bind_handlers(dataclasses.replace(spec, handlers=projection.handlers), {}))
    return handlers


def history(client: redis.Redis, page: int = PAGE) -> Iterator[dict[bytes, bytes]]:
    """Every entry of the event log, oldest first."""
    start = "-"
    while True:
        entries = client.xrange(Keys.event_log(), min=start, count=page)
        for _, fields in entries:
            yield fields
        if len(entries) < page:
            return
        start = "(" + entries[-1][0].decode()


def forget(client: redis.Redis, spec: ServiceSpec) -> None:
    """Delete the projections' documents and the replay inbox (for a rebuild from scratch)."""
    patterns = [Keys.document(spec.name, projection.collection, "*") for projection in spec.projections]
    patterns.append(Keys.inbox(replay_inbox(spec.name), "*"))
    for pattern in patterns:
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) == 500:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)


def replay(
    spec: ServiceSpec, settings: BusSettings, *, rebuild: bool = False, report: Callable[[str], None] = lambda _: None
) -> ReplayReport:
    handlers = projection_handlers(spec)
    publisher = RedisPublisher(settings)
    result = ReplayReport(spec.name, rebuilt=rebuild)
    if rebuild:
        forget(publisher.redis, spec)
        report(f"{spec.name}: projections {', '.join(p.collection for p in spec.projections)} cleared")
    for fields in history(publisher.redis):
        result.read += 1
        handler = handlers.get(fields[b"type"].decode())
        if handler is None:
            continue
        try:
            envelope, event = open_envelope(fields[b"envelope"].decode(), fields[b"signature"].decode(),
                                            key=settings.key, max_bytes=settings.max_message_bytes)
        except RejectedMessage as rejected:
            result.rejected += 1
            report(f"skipped a log entry: {rejected}")
            continue
        if _apply(publisher, spec.name, handler, envelope, event):
            result.replayed += 1
        else:
            result.already_replayed += 1
    return result


def _apply(publisher: RedisPublisher, service: str, handler: BoundHandler, envelope: Envelope, event) -> bool:
    """One event through a replay unit of work; False when an earlier replay already applied it."""
    for _ in range(CONFLICT_ATTEMPTS):
        uow = publisher.unit_of_work(service, envelope, inbox=replay_inbox(service))
        if uow.already_handled():
            return False
        handler(event, uow)
        if uow.outbox:
            raise RuntimeError(f"{service}: a projection handler published {uow.outbox[0].type}; projections must not")
        try:
            uow.commit()
            return True
        except AlreadyHandled:
            return False
        except ConcurrentUpdate:
            continue  # the live worker changed the same document meanwhile: read it again
    raise RuntimeError(f"{service}: {envelope.type} {envelope.event_id} kept conflicting with live updates")
