"""The HTTP edge of the order service. It only stores and publishes through a unit of work, so the same app runs
over Redis (microservices) or the in-process bus (monolith)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, FastAPI, Header, HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from events import http
from events.catalog import OrderItem
from events.http import Bus, Caller, Edge, authenticate, invalid_request, prepare, responses, run_command
from order_service import handlers
from order_service.domain import (
    CataloguedProduct,
    IdempotencyConflict,
    Order,
    OrderStatus,
    OrderTooLarge,
    UnknownProducts,
)
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


def create_app(bus: Bus, edge: Edge) -> FastAPI:
    app = FastAPI(title="shop: order service", version="1")
    prepare(app, edge)
    caller = authenticate(edge)

    @app.post("/orders", status_code=202, response_model=Order,
              responses={201: {"model": Order, "description": "placed and settled"},
                         **responses(401, 403, 409, 413, 422, 503)})
    def place_order(
        request: PlaceOrder, response: Response, me: Caller = Depends(caller),
        idempotency_key: Annotated[str | None, Header(max_length=200, description=(
            "the same key and request again return the first order instead of placing another; the same key "
            "with another request is a 409"))] = None,
    ) -> dict[str, Any] | JSONResponse:
        """202 Accepted, not done: stock, payment and notification follow as events. Where the bus settles the order
        before it answers (the monolith's direct calls), 201 with its final status. A customer orders for
        themselves only. An unknown product is refused here, from this service's own catalogue: no call to the
        product service."""
        if not me.may_act_for(request.customer_id):
            raise HTTPException(status_code=403, detail="a customer can place orders only for themselves")
        fingerprint = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        try:
            order = run_command(bus, SERVICE_NAME, lambda uow: handlers.place_order(
                uow, customer_id=request.customer_id, items=request.items, payment_method=request.payment_method,
                idempotency_key=idempotency_key, request_hash=fingerprint))
        except UnknownProducts as unknown:
            return invalid_request(unknown.problems)
        except OrderTooLarge as too_large:
            return invalid_request([f"items: {too_large}"])
        except IdempotencyConflict as conflict:
            raise HTTPException(status_code=409, detail=str(conflict)) from None
        if getattr(bus, "settles_on_commit", False) or order.status is not OrderStatus.PENDING:
            order = orders(bus.unit_of_work(SERVICE_NAME)).get(order.id) or order
        if order.status is not OrderStatus.PENDING:
            response.status_code = 201
        return order_view(order)

    @app.get("/catalogue/{product_id}", response_model=CataloguedProduct, responses=responses(404, 503))
    def catalogued_product(product_id: str) -> dict[str, Any]:
        """The product as this service knows it (what an order would be priced at): lets a client, or a test, see
        when a new product has reached the order service. Public, as the catalogue is."""
        product = catalogue(bus.unit_of_work(SERVICE_NAME)).get(product_id)
        if product is None:
            raise HTTPException(status_code=404, detail=f"no product {product_id} in the order service's catalogue")
        return product.model_dump(mode="json")

    @app.get("/orders/{order_id}", response_model=Order, responses=responses(401, 404, 422, 503))
    def get_order(order_id: UUID, me: Caller = Depends(caller)) -> dict[str, Any]:
        """One's own order (an admin: any). Anyone else's is not found, whether it exists or not."""
        order = orders(bus.unit_of_work(SERVICE_NAME)).get(order_id)
        if order is None or not me.may_act_for(order.customer_id):
            raise HTTPException(status_code=404, detail=f"no order {order_id}")
        return order_view(order)

    return app
