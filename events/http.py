"""What every service's HTTP edge shares: the bus it stores through, who the caller is, the limits on what it may send,
and the one shape of every error answer.

Kept here (beside the contracts) because services may share only `events/`: each service's `api.py` builds its own
FastAPI app, and the monolith serves them side by side, so an answer reads the same whichever service or wiring says it.

* Errors: RFC 9457 `application/problem+json`, `{"type", "title", "status", "detail"}`, plus `problems` (one line
  per invalid field) on a 422.
* Callers: OAuth2 bearer tokens, JWTs the user service signs with its Ed25519 key (EdDSA) and every API verifies
  offline with its public key: no service calls another to authenticate a request. Roles: `customer`, `admin`.
* Limits: a body larger than `max_body_bytes` is refused with 413 before it is read whole; a store or broker that is
  unavailable (down, out of memory) answers 503 with `Retry-After`, never 500.
* Health: `/health/live` (and `/health`) answers without any I/O; `/health/ready` runs the edge's `ready` check (built
  by the composition root from its stores and broker: this module knows none of them) and answers 503 when it fails.
* Metrics: `/metrics`, each request counted by method, route template and status, and timed (Prometheus text).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import jwt
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from events.unit_of_work import ConcurrentUpdate, UnitOfWork

T = TypeVar("T")
PROBLEM = "application/problem+json"
Role = Literal["customer", "admin"]
TOKEN_ISSUER = "user_service"
TOKEN_AUDIENCE = "shop"


class ApiSettings(BaseSettings):
    """Where one service's API listens. Each service subclasses it with its own env prefix and default port."""

    host: str = "127.0.0.1"
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_", extra="ignore")

    max_body_bytes: int = Field(64 * 1024, description="larger request bodies are refused with 413, unread")
    token_ttl: int = Field(3600, description="seconds an access token is valid")


class Bus(Protocol):
    """A wiring of stores and broker, or an in-process bus: an API needs only units of work and their commit. A bus
    whose commit runs the whole saga before it returns says so with `settles_on_commit = True`."""

    def unit_of_work(self, service: str) -> UnitOfWork: ...
    def commit(self, uow: UnitOfWork) -> None: ...


class TokenKeys(Protocol):
    """The user service's key: its private half signs tokens (only where the user service runs), its public half
    verifies them everywhere (key objects PyJWT takes)."""

    def token_signing_key(self) -> Any: ...
    def token_verifying_key(self) -> Any: ...


@dataclass(frozen=True)
class Caller:
    user_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_act_for(self, customer_id: str) -> bool:
        return self.is_admin or self.user_id == customer_id


class NotReady(Exception):
    """Raised by an edge's `ready` check when something the API needs does not answer; /health/ready answers 503 with
    its message (which says what, never where: no URL, no password)."""


@dataclass
class Edge:
    """What an API needs beside its bus: the token keys, what counts as "unavailable", the limits, and what "ready"
    means."""

    keys: TokenKeys
    unavailable: tuple[type[Exception], ...] = ()
    settings: EdgeSettings = field(default_factory=EdgeSettings)
    ready: Callable[[], None] | None = None
    """/health/ready: returns when this API's store and the broker answer, raises NotReady (or an `unavailable`
    error) otherwise; None: nothing to check (an in-process bus)"""

    def issue(self, user_id: str, role: Role) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "role": role, "iss": TOKEN_ISSUER, "aud": TOKEN_AUDIENCE, "iat": now,
                  "exp": now + self.settings.token_ttl}
        return jwt.encode(claims, self.keys.token_signing_key(), algorithm="EdDSA")

    def caller(self, token: str) -> Caller:
        try:
            claims = jwt.decode(token, self.keys.token_verifying_key(), algorithms=["EdDSA"], audience=TOKEN_AUDIENCE,
                                issuer=TOKEN_ISSUER, options={"require": ["sub", "exp", "iat"]})
        except jwt.PyJWTError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        role = claims.get("role")
        if role not in ("customer", "admin") or not isinstance(claims["sub"], str):
            raise unauthorized("invalid token: no valid role or subject")
        return Caller(claims["sub"], role)


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


bearer = HTTPBearer(auto_error=False, description="an access token from the user service's POST /token")


def authenticate(edge: Edge) -> Callable[..., Caller]:
    """The dependency that turns `Authorization: Bearer <token>` into a Caller (401 otherwise)."""

    def caller(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
        if credentials is None:
            raise unauthorized("an access token is required (POST /token on the user service)")
        return edge.caller(credentials.credentials)

    return caller


def admin_only(edge: Edge) -> Callable[..., Caller]:
    authenticated = authenticate(edge)

    def admin(caller: Caller = Depends(authenticated)) -> Caller:
        if not caller.is_admin:
            raise HTTPException(status_code=403, detail="this needs the admin role")
        return caller

    return admin


# ---------------------------------------------------------------------------------------------------------------------
# One error shape
# ---------------------------------------------------------------------------------------------------------------------
class Problem(BaseModel):
    """RFC 9457 problem details: what every 4xx/5xx answer of the shop looks like."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    problems: list[str] | None = Field(None, description="422: one line per invalid field, 'path: message'")


TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
          429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


def problem(status: int, detail: str | None = None, problems: list[str] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(title=TITLES.get(status, "Error"), status=status, detail=detail, problems=problems)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers, media_type=PROBLEM)


def invalid_request(problems: list[str]) -> JSONResponse:
    """The one shape of a 422."""
    return problem(422, "the request is invalid", problems)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses an operation can answer, each in the problem shape. An operation
    with a body (it can answer 413) can also answer 400: a body FastAPI cannot even parse (not UTF-8, a broken
    form)."""
    if 413 in statuses:
        statuses = (400, *statuses)
    return {status: {"model": Problem, "description": TITLES.get(status, "Error"),
                     "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for status in sorted(set(statuses))}


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of `app` answers on `path` (what a 405's `Allow` must list)."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods or set()
    return sorted(methods)


def prepare(app: FastAPI, edge: Edge | None = None) -> None:
    """Every app's common parts: the error shape, the body limit, 503 for an unavailable store, the health checks,
    the request metrics."""

    @app.exception_handler(RequestValidationError)
    async def readable_422(_: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_request([
            f"{'.'.join(str(part) for part in error['loc'] if part != 'body') or 'body'}: {error['msg']}"
            for error in exc.errors()
        ])

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return problem(exc.status_code, str(exc.detail), headers=headers or None)

    unavailable = edge.unavailable if edge else ()
    if unavailable:
        async def unavailable_503(_: Request, exc: Exception) -> JSONResponse:
            return problem(503, "a store or the broker is unavailable; try again shortly", headers={"Retry-After": "1"})

        for error in unavailable:
            app.add_exception_handler(error, unavailable_503)
    app.add_middleware(BodyLimit, max_bytes=(edge.settings if edge else EdgeSettings()).max_body_bytes)
    registry = CollectorRegistry(auto_describe=True)
    app.add_middleware(RequestMetrics, metrics=HttpMetrics(registry), routes=app.router.routes)
    ready = edge.ready if edge else None

    @app.get("/health", summary="Live (as /health/live)")
    @app.get("/health/live", summary="Live")
    def live() -> dict[str, str]:
        """The process answers: no I/O at all, so a store or broker that is down never gets the API restarted."""
        return {"status": "ok"}

    @app.get("/health/ready", summary="Ready", responses=responses(503))
    def is_ready() -> dict[str, str]:
        """This API's store and the broker answer now; 503 with Retry-After (and what does not answer) otherwise."""
        if ready is not None:
            try:
                ready()
            except NotReady as exc:
                raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "1"}) from None
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """This process's HTTP request counts and latencies, in Prometheus' text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HttpMetrics:
    """The request metrics of one app, in a registry of its own (several apps may live in one process: the monolith,
    the tests)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("http_requests", "HTTP requests answered, by method, route template and status",
                                ("method", "route", "status"), registry=registry)
        self.latency = Histogram("http_request_duration_seconds",
                                 "Seconds from a request's arrival to the end of its answer, by method and route "
                                 "template", ("method", "route"), registry=registry)


UNMATCHED = "unmatched"
"""The route label of a request no route matches (its raw path would make a label value per URL ever tried)."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted by name; any other a client invents is counted as `other`."""


def route_template(scope: Scope, routes: list[BaseRoute]) -> str:
    """The path template of the route that answered (`/orders/{order_id}`, not the order's id): the one the router
    chose, else (a request refused before routing, as a body over the limit) the first route matching it."""
    route = scope.get("route")
    if route is None:
        route = next((candidate for candidate in routes if candidate.matches(scope)[0] is Match.FULL), None)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestMetrics:
    """ASGI middleware (the outermost of ours): counts and times every HTTP request; one that raised counts as 500."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: HttpMetrics,
                 routes: list[BaseRoute]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, started = 500, time.perf_counter()

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = route_template(scope, self.routes)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


class BodyLimit:
    """ASGI middleware: 413 as soon as the declared or the received length passes the limit, so a huge body is never
    read into memory whole."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        received, refused = 0, False

        async def counted() -> Message:
            """A chunked body that grows past the limit: answer 413 at once, then tell the app the client left."""
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        response = problem(413, f"the request body is larger than {self.max_bytes} bytes")
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


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
    raise HTTPException(status_code=503, detail="too many concurrent changes to the same data; try again",
                        headers={"Retry-After": "1"})
