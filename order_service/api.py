"""The HTTP edge of the order service. It only stores and publishes through a unit of work, so the same app runs
over Redis (microservices) or the in-process bus (monolith)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from events import http
from events.catalog import OrderItem
from events.http import Bus, answer_validation_errors_readably, health, invalid_request
from order_service import handlers
from order_service.domain import Order, OrderStatus, UnknownProducts
from order_service.store import catalogue, orders

SERVICE_NAME = "order_service"


class ApiSettings(http.ApiSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_ORDER_API_", extra="ignore")

    port: int = 5001


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=100)
    items: list[OrderItem] = Field(min_length=1, max_length=100)
    payment_method: str = Field(min_length=1, max_length=50)


def order_view(order: Order) -> dict[str, Any]:
    return order.model_dump(mode="json")


def create_app(bus: Bus) -> FastAPI:
    app = FastAPI(title="shop: order service", version="1")
    answer_validation_errors_readably(app)
    health(app)

    @app.post("/orders", status_code=202, response_model=None, responses={201: {"description": "placed and settled"}})
    def place_order(request: PlaceOrder, response: Response) -> dict[str, Any] | JSONResponse:
        """202 Accepted, not done: stock, payment and notification follow as events. Where the bus settles the order
        before it answers (the monolith's direct calls), 201 with its final status. An unknown product is refused
        here, from this service's own catalogue: no call to the product service."""
        uow = bus.unit_of_work(SERVICE_NAME)
        try:
            order = handlers.place_order(
                uow, customer_id=request.customer_id, items=request.items, payment_method=request.payment_method
            )
        except UnknownProducts as unknown:
            return invalid_request(unknown.problems)
        bus.commit(uow)
        if getattr(bus, "settles_on_commit", False):
            order = orders(bus.unit_of_work(SERVICE_NAME)).get(order.id) or order
            if order.status is not OrderStatus.PENDING:
                response.status_code = 201
        return order_view(order)

    @app.get("/catalogue/{product_id}")
    def catalogued_product(product_id: str) -> dict[str, Any]:
        """The product as this service knows it (what an order would be priced at): lets a client, or a test, see
        when a new product has reached the order service."""
        product = catalogue(bus.unit_of_work(SERVICE_NAME)).get(product_id)
        if product is None:
            raise HTTPException(status_code=404, detail=f"no product {product_id} in the order service's catalogue")
        return product.model_dump(mode="json")

    @app.get("/orders/{order_id}")
    def get_order(order_id: UUID) -> dict[str, Any]:
        order = orders(bus.unit_of_work(SERVICE_NAME)).get(order_id)
        if order is None:
            raise HTTPException(status_code=404, detail=f"no order {order_id}")
        return order_view(order)

    return app
