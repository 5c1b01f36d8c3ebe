"""Starting the console beside the processes it watches: `shop up` and `shop demo` (`start_console`, next to the
supervisor), `shop monolith` (`monolith_console`, inside the one process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from events.http import Edge
from events.messaging import Periodic
from events.settings import BusSettings
from notification_service.service import NotificationSettings
from shop.console.app import ConsoleServer, ConsoleSettings, create_console_app
from shop.console.samples import SampleOrders
from shop.console.views import MonolithView, ShopView
from shop.services import APIS
from shop.supervisor import Supervisor


def start_console(supervisor: Supervisor, report: Callable[[str], None]) -> Callable[[], None] | None:
    """Serve the console on a thread of this process (SHOP_CONSOLE_HOST/PORT; port 0: none). Returns how to stop it."""
    from shop.bootstrap import UNAVAILABLE, bootstrap, edge_of

    settings = ConsoleSettings()
    if not settings.enabled:
        return None
    bus = BusSettings()
    wiring = bootstrap(bus)
    log = NotificationSettings().notification_log
    view = ShopView(wiring, supervisor, log)
    sampler = Periodic("console-rates", 1.0, view.history.sample, UNAVAILABLE, at_start=True).start()
    urls = {service: api.settings().base_url for service, api in APIS.items()}
    samples = SampleOrders(urls["order_service"], urls["product_service"], urls["user_service"], bus.fault_injection)
    app = create_console_app(view, edge_of(wiring.keys), samples, urls["user_service"], log)

    def close() -> None:
        sampler.stop()
        wiring.close()

    return _serve(app, settings, report, close)


def monolith_console(bus: Any, edge: Edge, report: Callable[[str], None]) -> Callable[[], None] | None:
    """The console inside `shop monolith`: the same page over the one process (every API on the order API's port)."""
    settings = ConsoleSettings()
    if not settings.enabled:
        return None
    base_url = APIS["order_service"].settings().base_url
    # No poison orders here: a charge that kills the process would take the whole monolith down with it.
    samples = SampleOrders(base_url, base_url, base_url, fault_injection=False)
    app = create_console_app(MonolithView(bus), edge, samples, base_url, NotificationSettings().notification_log)
    return _serve(app, settings, report, lambda: None)


def _serve(app: FastAPI, settings: ConsoleSettings, report: Callable[[str], None],
           close: Callable[[], None]) -> Callable[[], None]:
    server = ConsoleServer(app, settings)
    if server.start():
        report(f"console on {settings.base_url}")
    else:
        report(f"the console could not listen on {settings.base_url} (SHOP_CONSOLE_PORT chooses another port)")

    def stop() -> None:
        server.stop()
        close()

    return stop
