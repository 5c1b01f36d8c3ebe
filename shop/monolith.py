"""`shop monolith`: the same shop in one process over one database, the composition root of monolith mode.

Nothing here is a handler. The services' own ServiceSpecs (the same handler functions the celery workers run) are
subscribed to an in-process bus over ONE database (`shop.bootstrap.bootstrap_monolith`), and the services' own HTTP
apps (orders, users, products) are served together on the order API's port, writing the same notification log. The
monolith and the microservices are two wirings of one code base, which is what makes `shop compare` fair.

Dispatch (`SHOP_MONOLITH_DISPATCH`, or `shop monolith --dispatch`): `sync`, what a monolith is — direct calls, the whole
saga in one transaction before the request is answered, the card gateway the one call outside it; or `queued` — the
request is answered at once and the saga runs on a dispatcher thread from rows of the same database. Either way every
accepted order, retry and dead letter is in the database: a killed and restarted monolith finishes what it accepted
(events/adapters/sql/inprocess.py says how).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.adapters.ed25519.keyring import KeyRing
from events.adapters.sql.inprocess import SqlInProcessBus
from events.http import Bus, Edge, prepare
from events.settings import BusSettings
from order_service.api import ApiSettings
from shop.bootstrap import MissingKeys, answers, bootstrap_monolith, edge_of, ready_when
from shop.console.run import monolith_console
from shop.processes import freeze_startup_heap
from shop.services import APIS, SERVICES
from shop.telemetry import configure_tracing, instrument_app
from user_service.api import AdminSettings, ensure_admin

log = logging.getLogger(__name__)


class MonolithSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_MONOLITH_", extra="ignore")

    dispatch: Literal["sync", "queued"] = Field(
        "sync", description="sync: the saga in the request, in one transaction; queued: answered at once, the saga "
        "runs on a dispatcher thread")
    shutdown_timeout: float = Field(
        30.0, description="seconds a graceful stop waits for due deliveries (those left are taken at the next start)"
    )


class FaultSwitch(BaseModel):
    down: bool


def create_monolith_app(bus: Bus, edge: Edge, control: SqlInProcessBus | None = None) -> FastAPI:
    """Every service's own app (orders, users, products) over the in-process bus, served side by side on one port
    (their paths do not overlap). With `control` (fault injection), also `PUT /faults/{service}` (used by `shop
    compare` to take payment down for a window: its deliveries wait, as a stopped worker's messages do) and a backlog
    probe."""
    app = FastAPI(title="shop: monolith", version="1")
    prepare(app, edge)
    for api in APIS.values():
        app.include_router(api.create_app(bus, edge).router)
    if control is None:
        return app

    @app.put("/faults/{service}")
    def switch_service(service: str, switch: FaultSwitch) -> dict[str, Any]:
        if service not in SERVICES:
            raise HTTPException(status_code=404, detail=f"no service {service}")
        (control.pause if switch.down else control.resume)(service)
        return {"down": sorted(control.paused)}

    @app.get("/monolith/backlog")
    def backlog() -> dict[str, int]:
        return {"backlog": control.backlog(), "dead_letters": sum(control.dead_letters.counts().values())}

    return app


def monolith_edge(keys: KeyRing, bus: SqlInProcessBus) -> Edge:
    """The HTTP edge of the monolith: ready while its one database answers (its broker is in process)."""
    return edge_of(keys, ready_when({"the database": answers(bus.store)}))


def run_monolith(settings: BusSettings | None = None, dispatch: str | None = None, console: bool = True,
                 report: Callable[[str], None] = print) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both), then finish what is due before exiting."""
    import uvicorn

    settings = settings or BusSettings()
    monolith = MonolithSettings()
    api_settings = ApiSettings()
    keys = KeyRing.load(settings.keys_path)
    if keys.missing(["user_service"], ["user_service"]):
        raise MissingKeys(f"no user_service key pair in {settings.keys_path} to sign access tokens: run "
                          "`shop keys generate`")
    configure_tracing("monolith")
    bus = bootstrap_monolith(settings, dispatch or monolith.dispatch)
    admin = AdminSettings()
    if admin.email and admin.password:
        ensure_admin(bus, admin.email, admin.password)
    bus.start()
    stop_console = monolith_console(bus, monolith_edge(keys, bus), report) if console else None
    try:
        app = instrument_app(create_monolith_app(bus, monolith_edge(keys, bus),
                                                 bus if settings.fault_injection else None))
        freeze_startup_heap()
        uvicorn.run(app, host=api_settings.host, port=api_settings.port, log_level="warning")
    finally:
        if stop_console:
            stop_console()
        left = bus.stop(timeout=monolith.shutdown_timeout)
        if left:
            log.warning("%d deliveries left in the database; the next start takes them", left)
