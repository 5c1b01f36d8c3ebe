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

The log is read in order (appended by the same step that publishes), and each
entry's signature is checked as a consumer would: the log is an input like any queue.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from events.bus import BoundHandler, ServiceSpec, bind_handlers
from events.catalog import Event
from events.envelope import Envelope, RejectedMessage, open_envelope
from events.unit_of_work import AlreadyHandled, ConcurrentUpdate
from shop.bootstrap import Wiring

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


def replay(
    spec: ServiceSpec, wiring: Wiring, *, rebuild: bool = False, report: Callable[[str], None] = lambda _: None
) -> ReplayReport:
    handlers = projection_handlers(spec)
    settings = wiring.settings
    result = ReplayReport(spec.name, rebuilt=rebuild)
    if rebuild:
        store = wiring.store(spec.name)
        for projection in spec.projections:
            store.forget(spec.name, projection.collection, inbox=replay_inbox(spec.name))
        report(f"{spec.name}: projections {', '.join(p.collection for p in spec.projections)} cleared")
    for type_name, raw, signature in wiring.event_log.history():
        result.read += 1
        handler = handlers.get(type_name)
        if handler is None:
            continue
        try:
            envelope, event = open_envelope(raw, signature, keys=wiring.keys, max_bytes=settings.max_message_bytes,
                                            publishers=wiring.publishers)
        except RejectedMessage as rejected:
            result.rejected += 1
            report(f"skipped a log entry: {rejected}")
            continue
        if _apply(wiring, spec.name, handler, envelope, event):
            result.replayed += 1
        else:
            result.already_replayed += 1
    return result


def _apply(wiring: Wiring, service: str, handler: BoundHandler, envelope: Envelope, event: Event) -> bool:
    """One event through a replay unit of work; False when an earlier replay already applied it."""
    for _ in range(CONFLICT_ATTEMPTS):
        uow = wiring.unit_of_work(service, envelope, inbox=replay_inbox(service))
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
