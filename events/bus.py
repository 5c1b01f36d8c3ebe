"""What a service is to the bus, whichever bus carries it.

A service is a name plus a map {event model: handler}. A handler is a plain function
`handler(event, uow, **dependencies)`; `bind_handlers` fills the dependencies by parameter name (as cosmicpython's
bootstrap does), so the same functions run under a celery worker, on any store, or on the in-process bus.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from events.catalog import Event
from events.unit_of_work import UnitOfWork

Handler = Callable[..., None]
BoundHandler = Callable[[Event, UnitOfWork], None]


class TransientError(Exception):
    """A failure worth retrying with backoff (a gateway timeout, a lost connection). Anything else is a bug or bad
    data and goes to the dead-letter store at once, to be replayed after a fix."""


@dataclass(frozen=True)
class Projection:
    """A service's own copy of another service's data (one collection), built only from that service's events.

    Because it is derived from events alone, it can be rebuilt at any time from the event log (`shop replay`).
    Its handlers must therefore be pure projections: no outgoing events, no calls out, and idempotent under
    replay (they keep the newest revision they saw)."""

    collection: str
    handlers: Mapping[type[Event], Handler]


@dataclass(frozen=True)
class ServiceSpec:
    """A service as the bus sees it. `queue` is its one durable queue; it receives exactly the event types it
    handles."""

    name: str
    handlers: Mapping[type[Event], Handler]
    dependencies: Callable[..., Mapping[str, Any]] = field(default=lambda: {})
    """Builds what the handlers need from the resources a wiring offers, asked for by parameter name (e.g.
    `dependencies(ledger)`): the service says what it needs, the bootstrap decides which adapter provides it."""
    projections: tuple[Projection, ...] = ()
    """The local read models among `handlers` (their handlers are in `handlers` too: one map says what reacts to
    what); named here so they can be rebuilt from history."""
    calls_out: tuple[type[Event], ...] = ()
    """The event types whose handler calls a system outside the process (a card gateway): a monolith must not hold a
    database transaction open across such a call (events/adapters/sql/inprocess.py)."""
    publishes: tuple[type[Event], ...] = ()
    """The event types this service publishes (from its handlers or its HTTP edge). Declared, not inferred, so the
    event catalogue (`shop asyncapi`) can say who sends what; a unit test holds it to what the handlers really do."""

    @property
    def queue(self) -> str:
        return self.name

    @property
    def event_types(self) -> list[str]:
        return sorted(model.type_name for model in self.handlers)


def bind_handlers(spec: ServiceSpec, dependencies: Mapping[str, Any]) -> dict[str, BoundHandler]:
    """{event type name: handler(event, uow)} with every other parameter injected by name."""
    bound: dict[str, BoundHandler] = {}
    for model, handler in spec.handlers.items():
        wanted = list(inspect.signature(handler).parameters)[2:]
        missing = [name for name in wanted if name not in dependencies]
        if missing:
            raise TypeError(f"{spec.name}: {handler.__name__} needs {missing}, not provided by its bootstrap")
        bound[model.type_name] = partial(handler, **{name: dependencies[name] for name in wanted})
    return bound


def build_dependencies(spec: ServiceSpec, resources: Mapping[str, Any]) -> Mapping[str, Any]:
    """Call `spec.dependencies` with the resources it names."""
    wanted = list(inspect.signature(spec.dependencies).parameters)
    missing = [name for name in wanted if name not in resources]
    if missing:
        raise TypeError(f"{spec.name}: its dependencies need {missing}, not offered by this wiring")
    return spec.dependencies(**{name: resources[name] for name in wanted})
