"""`shop monolith`: the same shop in one process, the composition root of monolith mode.

Nothing here is a handler. The services' own ServiceSpecs (the same handler functions the celery workers run)
are subscribed to an in-process bus (`shop.bootstrap.bootstrap_monolith`), and the services' own HTTP apps (orders,
users, products) are served together on the order API's port, writing the same notification log. The monolith and the
microservices are two wirings of one code base, which is what makes `shop compare` fair.

Dispatch: an in-process queue with one dispatcher thread (`DispatchingInMemoryBus`), not synchronous dispatch.
Synchronous dispatch would run payment and notification inside `POST /orders`: the request would wait for the
gateway, a slow gateway would slow order taking, and the API's answer (202 Accepted, the saga continues) would
differ from the microservices'. With the queue, POST stores the order and its OrderCreated in one step and returns
202 at once; the dispatcher then runs handlers one at a time, so they never race each other on the same documents,
and retries a transient failure on a timer instead of blocking the queue.

What a monolith gives up, by construction: its state (orders, payments, queued events, retries) is in memory.
A graceful stop (SIGTERM, SIGINT) drains the queue before exiting, so nothing accepted is left un-notified; a
killed process loses what was in flight, and a restarted one no longer knows earlier orders (GET answers 404).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.bus import Handler, ServiceSpec, TransientError
from events.http import answer_validation_errors_readably
from events.memory import DispatchingInMemoryBus
from events.settings import BusSettings
from order_service.api import ApiSettings
from shop.bootstrap import bootstrap_monolith
from shop.services import APIS, SERVICES

log = logging.getLogger(__name__)


class MonolithSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_MONOLITH_", extra="ignore")

    shutdown_timeout: float = Field(
        30.0, description="seconds a graceful stop waits for queued events and retries before giving them up"
    )


class ServiceOutage(TransientError):
    """A service switched off by fault injection: its deliveries fail as a crashed dependency's would, and are
    retried by the bus's retry policy."""


class FaultSwitches:
    """Which services are "down" (fault injection only): the monolith's stand-in for stopping one worker, since a
    monolith cannot stop one of its parts."""

    def __init__(self) -> None:
        self._down: set[str] = set()
        self._lock = threading.Lock()

    def set(self, service: str, down: bool) -> None:
        with self._lock:
            (self._down.add if down else self._down.discard)(service)

    def is_down(self, service: str) -> bool:
        return service in self._down

    def down(self) -> list[str]:
        return sorted(self._down)


def _switchable(service: str, handler: Handler, faults: FaultSwitches) -> Handler:
    """The same handler, failing while its service is switched off. `functools.wraps` keeps the signature, so the
    bus still injects the handler's dependencies by name."""

    @functools.wraps(handler)
    def run(event: Any, uow: Any, **dependencies: Any) -> None:
        if faults.is_down(service):
            raise ServiceOutage(f"{service} is switched off")
        handler(event, uow, **dependencies)

    return run


def with_fault_switches(spec: ServiceSpec, faults: FaultSwitches) -> ServiceSpec:
    return dataclasses.replace(
        spec, handlers={model: _switchable(spec.name, handler, faults) for model, handler in spec.handlers.items()}
    )


def build_bus(settings: BusSettings, faults: FaultSwitches | None = None) -> DispatchingInMemoryBus:
    if faults is None:
        return bootstrap_monolith(settings)
    return bootstrap_monolith(settings, wrap=lambda spec: with_fault_switches(spec, faults))


class FaultSwitch(BaseModel):
    down: bool


def create_monolith_app(bus: DispatchingInMemoryBus, faults: FaultSwitches | None = None) -> FastAPI:
    """Every service's own app (orders, users, products) over the in-process bus, served side by side on one port
    (their paths do not overlap); with fault injection, plus `PUT /faults/{service}` (used by `shop compare` to take
    payment down for a window) and a backlog probe."""
    app = FastAPI(title="shop: monolith", version="1")
    answer_validation_errors_readably(app)
    for api in APIS.values():
        app.include_router(api.create_app(bus).router)
    if faults is None:
        return app

    @app.put("/faults/{service}")
    def switch_service(service: str, switch: FaultSwitch) -> dict[str, Any]:
        if service not in SERVICES:
            raise HTTPException(status_code=404, detail=f"no service {service}")
        faults.set(service, switch.down)
        return {"down": faults.down()}

    @app.get("/monolith/backlog")
    def backlog() -> dict[str, int]:
        return {"backlog": bus.backlog(), "dead_letters": len(bus.dead_letters)}

    return app


def run_monolith(settings: BusSettings | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both), then drain the dispatcher before exiting."""
    import uvicorn

    settings = settings or BusSettings()
    api_settings = ApiSettings()
    faults = FaultSwitches() if settings.fault_injection else None
    bus = build_bus(settings, faults)
    bus.start()
    try:
        uvicorn.run(
            create_monolith_app(bus, faults), host=api_settings.host, port=api_settings.port, log_level="warning"
        )
    finally:
        abandoned = bus.stop(timeout=MonolithSettings().shutdown_timeout)
        if bus.dead_letters:
            log.error("%d dead letters in memory are lost with this process", len(bus.dead_letters))
        if abandoned:
            log.error("%d deliveries abandoned at shutdown", abandoned)
