"""What every service's HTTP edge shares: the unit-of-work bus it stores through, and one way to answer bad input.

Kept here (beside the contracts) because services may share only `events/`: each service's `api.py` builds its own
FastAPI app, and the monolith serves them side by side, so a 422 reads the same whichever service or wiring says it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_settings import BaseSettings

from events.unit_of_work import ConcurrentUpdate, UnitOfWork

T = TypeVar("T")


class ApiSettings(BaseSettings):
    """Where one service's API listens. Each service subclasses it with its own env prefix and default port."""

    host: str = "127.0.0.1"
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Bus(Protocol):
    """A wiring of stores and broker, or an in-process bus: an API needs only units of work and their commit. A bus
    whose commit runs the whole saga before it returns says so with `settles_on_commit = True`."""

    def unit_of_work(self, service: str) -> UnitOfWork: ...
    def commit(self, uow: UnitOfWork) -> None: ...


def invalid_request(problems: list[str]) -> JSONResponse:
    """The one shape of a 422: {"error": "invalid request", "problems": ["field.path: message", ...]}."""
    return JSONResponse(status_code=422, content={"error": "invalid request", "problems": problems})


def answer_validation_errors_readably(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def readable_422(_: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_request([
            f"{'.'.join(str(part) for part in error['loc'] if part != 'body') or 'body'}: {error['msg']}"
            for error in exc.errors()
        ])


def health(app: FastAPI) -> None:
    @app.get("/health")
    def healthy() -> dict[str, str]:
        return {"status": "ok"}


def run_command(bus: Bus, service: str, command: Callable[[UnitOfWork], T], attempts: int = 5) -> T:
    """Run a command on a fresh unit of work and commit it; when a document it read changed meanwhile (a saga step
    reserving the same product, a second registration of the same email), run it again on fresh state. The
    command's own exceptions (a duplicate, an unknown id) pass through for the route to answer."""
    for _ in range(attempts):
        uow = bus.unit_of_work(service)
        result = command(uow)
        try:
            bus.commit(uow)
        except ConcurrentUpdate:
            continue
        return result
    raise HTTPException(status_code=503, detail="too many concurrent changes to the same data; try again")
