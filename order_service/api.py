"""The HTTP edge of the order service. It only stores and publishes through a unit of work, so the same app runs
over Redis (microservices) or the in-process bus (monolith)."""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.catalog import OrderLine
from events.unit_of_work import UnitOfWork
from order_service import handlers
from order_service.domain import Order
from order_service.store import Orders

SERVICE_NAME = "order_service"


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_ORDER_API_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 5001

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Bus(Protocol):
    def unit_of_work(self, service: str) -> UnitOfWork: ...
    def commit(self, uow: UnitOfWork) -> None: ...


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=100)
    items: list[OrderLine] = Field(min_length=1, max_length=100)
    payment_method: str = Field(min_length=1, max_length=50)


def order_view(order: Order) -> dict[str, Any]:
    return order.model_dump(mode="json")


def create_app(bus: Bus) -> FastAPI:
    app = FastAPI(title="shop: order service", version="1")

    @app.exception_handler(RequestValidationError)
    async def readable_422(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in error['loc'] if part != 'body') or 'body'}: {error['msg']}"
            for error in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"error": "invalid request", "problems": problems})

    @app.post("/orders", status_code=202)
    def place_order(request: PlaceOrder) -> dict[str, Any]:
        """Accepted, not done: payment and notification follow as events."""
        uow = bus.unit_of_work(SERVICE_NAME)
        order = handlers.place_order(
            uow, customer_id=request.customer_id, items=request.items, payment_method=request.payment_method
        )
        bus.commit(uow)
        return order_view(order)

    @app.get("/orders/{order_id}")
    def get_order(order_id: UUID) -> dict[str, Any]:
        order = Orders(bus.unit_of_work(SERVICE_NAME)).get(order_id)
        if order is None:
            raise HTTPException(status_code=404, detail=f"no order {order_id}")
        return order_view(order)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
