"""The console's HTTP side: the static page, the live stream (server-sent events, FastAPI's own `EventSourceResponse`),
the JSON the page polls, and the admin actions.

Who may do what: every GET (the page, the board, the stream, a journey, the dead letters) is open, like `/metrics`,
because the console listens on 127.0.0.1 unless told otherwise (SHOP_CONSOLE_HOST); every action (POST) needs an
admin's access token as `Authorization: Bearer`, verified offline with the user service's public key like every API
does. The page gets that token by sending the admin's email and password to `POST /api/token`, which hands them to the
user API's own `POST /token` (the user service stays the only one that checks passwords); the page keeps the token in
the tab's sessionStorage.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import httpx
from fastapi import Depends, FastAPI, Form, Header, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.http import Caller, Edge, admin_only, bearer, prepare
from shop.console.samples import OUTCOMES, NeedsFaultInjection, SampleOrders
from shop.console.views import NotificationTail

STATIC = Path(str(resources.files("shop.console") / "static"))
BACKLOG_EVENTS = 100
"""events a page is sent when it connects (then only new ones)"""
PAGE_EVENTS = 200
"""events read per round trip for one page; a page that falls a whole page behind skips to the newest (see
`stream`), so a slow page costs the server one page of events, never a growing queue"""
DEAD_LETTERS_SHOWN = 50


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_CONSOLE_", extra="ignore")

    host: str = Field("127.0.0.1", description="where the console listens; it serves its views without a token, so "
                      "keep it on loopback or a private network")
    port: int = Field(5000, description="0: no console")

    @property
    def enabled(self) -> bool:
        return self.port != 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class View(Protocol):
    mode: str
    streams_events: bool

    def board(self) -> dict[str, Any]: ...
    def latest_events(self, count: int) -> list[dict[str, Any]]: ...
    def events_after(self, after: str, count: int, block_ms: int) -> list[dict[str, Any]]: ...
    def journey(self, order_id: str) -> dict[str, Any]: ...
    def dead_letters(self, limit: int) -> list[dict[str, Any]]: ...
    def replay(self, record_id: str) -> str: ...
    def purge(self, record_id: str) -> None: ...
    def stop_workers(self, service: str) -> None: ...
    def start_workers(self, service: str) -> None: ...
    def services(self) -> list[str]: ...


class PlaceOrders(BaseModel):
    outcome: Literal["paid", "declined", "out_of_stock", "flaky", "poison"]
    count: int = Field(1, ge=1, le=50)


def create_console_app(view: View, edge: Edge, samples: SampleOrders, user_url: str,
                       notification_log: Path) -> FastAPI:
    app = FastAPI(title="shop: console", version="1")
    prepare(app, edge)
    admin = admin_only(edge)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"mode": view.mode, "streams_events": view.streams_events, "services": view.services(),
                "outcomes": list(OUTCOMES), "poison": samples.fault_injection}

    @app.get("/api/board")
    def board() -> dict[str, Any]:
        """`shop status --json`'s report, plus handled/s over the last minute and which workers are held stopped."""
        return view.board()

    @app.get("/api/orders/{order_id}/journey")
    def journey(order_id: str) -> dict[str, Any]:
        """`shop trace ORDER --json`."""
        return view.journey(order_id)

    @app.get("/api/dead-letters")
    def dead_letters() -> dict[str, Any]:
        """`shop dlq list --json`, newest first, at most 50."""
        return {"dead_letters": view.dead_letters(DEAD_LETTERS_SHOWN)}

    @app.get("/api/stream", response_class=EventSourceResponse)
    async def stream(request: Request, last_event_id: Annotated[str | None, Header()] = None
                     ) -> AsyncIterator[ServerSentEvent]:
        """`event`: each event logged (the last 100 first; after a reconnection, from `Last-Event-ID`);
        `notification`: each line of the notification log; `skipped`: this page fell a whole page behind and was
        moved to the newest event."""
        tail = NotificationTail(notification_log)
        after = last_event_id or "0-0"
        if view.streams_events and last_event_id is None:
            backlog = await asyncio.to_thread(view.latest_events, BACKLOG_EVENTS)
            for item in backlog:
                yield ServerSentEvent(event="event", id=item["id"], data=item)
            after = backlog[-1]["id"] if backlog else after
        while not await request.is_disconnected():
            if view.streams_events:
                items = await asyncio.to_thread(view.events_after, after, PAGE_EVENTS, 500)
                if len(items) == PAGE_EVENTS:
                    newest = await asyncio.to_thread(view.latest_events, 1)
                    if newest and newest[-1]["id"] != items[-1]["id"]:
                        yield ServerSentEvent(event="skipped", data={"after": items[-1]["id"]})
                        items = newest
                for item in items:
                    yield ServerSentEvent(event="event", id=item["id"], data=item)
                after = items[-1]["id"] if items else after
            else:
                await asyncio.sleep(0.5)
            for line in await asyncio.to_thread(tail.read):
                yield ServerSentEvent(event="notification", data=line)

    @app.post("/api/token")
    def token(username: Annotated[str, Form(min_length=1, max_length=254)],
              password: Annotated[str, Form(min_length=1, max_length=128)]) -> dict[str, Any]:
        """The user API's `POST /token`, passed through (the page and the user API are on different ports). Only an
        admin's token is any use here."""
        response = httpx.post(f"{user_url}/token", data={"username": username, "password": password}, timeout=10)
        if response.status_code != 200:
            raise HTTPException(status_code=response.status_code, detail="sign-in refused by the user service")
        answer = dict(response.json())
        if not edge.caller(answer["access_token"]).is_admin:
            raise HTTPException(status_code=403, detail="the console's actions need the admin role")
        return answer

    @app.post("/api/orders", status_code=201)
    def place(request: PlaceOrders, _: Caller = Depends(admin),
              credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> dict[str, Any]:
        """Place COUNT sample orders that end as OUTCOME, through the order API, as the admin."""
        assert credentials is not None  # `admin` refused the request otherwise
        try:
            placed = samples.place(credentials.credentials, request.outcome, request.count)
        except NeedsFaultInjection as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        except RuntimeError as exc:  # the order API refused or is not up
            raise HTTPException(status_code=502, detail=str(exc)) from None
        return {"orders": [order["id"] for order in placed]}

    def known(service: str) -> str:
        if service not in view.services():
            raise HTTPException(status_code=404, detail=f"no workers named {service}")
        return service

    @app.post("/api/services/{service}/stop")
    def stop(service: str, _: Caller = Depends(admin)) -> dict[str, str]:
        """Stop SERVICE's workers and keep them stopped (the supervisor does not restart them) until started."""
        view.stop_workers(known(service))
        return {"service": service, "workers": "stopped"}

    @app.post("/api/services/{service}/start")
    def start(service: str, _: Caller = Depends(admin)) -> dict[str, str]:
        view.start_workers(known(service))
        return {"service": service, "workers": "started"}

    @app.post("/api/dead-letters/{record_id}/replay")
    def replay(record_id: str, _: Caller = Depends(admin)) -> dict[str, str]:
        """`shop dlq replay ID`."""
        try:
            return {"replayed": record_id, "into": view.replay(record_id)}
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no dead letter {record_id}") from None
        except ValueError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None

    @app.post("/api/dead-letters/{record_id}/purge")
    def purge(record_id: str, _: Caller = Depends(admin)) -> dict[str, str]:
        try:
            view.purge(record_id)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no dead letter {record_id}") from None
        return {"purged": record_id}

    return app


class ConsoleServer:
    """uvicorn on a daemon thread of the process that runs the shop (`shop up` holds the supervisor the actions use)."""

    def __init__(self, app: FastAPI, settings: ConsoleSettings) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, name="console", daemon=True)

    def start(self, timeout: float = 10.0) -> bool:
        """True once it listens; False when it could not (the port is taken: uvicorn says so and its thread ends)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(self.server.started)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
