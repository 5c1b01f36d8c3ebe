"""The HTTP edge of the product service: create a product, read it, change its price."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from events import http
from events.catalog import Money, ProductId, Stock
from events.http import Bus, Caller, Edge, admin_only, prepare, responses, run_command
from product_service import handlers
from product_service.domain import Product, ProductExists, UnknownProduct
from product_service.store import products

SERVICE_NAME = "product_service"


class ApiSettings(http.ApiSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_PRODUCT_API_", extra="ignore")

    port: int = 5005


class CreateProduct(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ProductId | None = Field(None, description="a SKU of your choosing; a UUID when left out")
    name: str = Field(min_length=1, max_length=200)
    price: Money
    stock: Stock


class ChangePrice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    price: Money


def product_view(product: Product) -> dict[str, Any]:
    return product.model_dump(mode="json")


def create_app(bus: Bus, edge: Edge) -> FastAPI:
    app = FastAPI(title="shop: product service", version="1")
    prepare(app, edge)
    admin = admin_only(edge)

    @app.post("/products", status_code=201, response_model=Product, responses=responses(401, 403, 409, 413, 422, 503))
    def create_product(request: CreateProduct, _: Caller = Depends(admin)) -> dict[str, Any]:
        """Admins only; reading the catalogue is public."""
        product_id = request.id or str(uuid4())
        try:
            product = run_command(bus, SERVICE_NAME, lambda uow: handlers.create_product(
                uow, product_id=product_id, name=request.name, price=request.price, stock=request.stock))
        except ProductExists as exists:
            raise HTTPException(status_code=409, detail=str(exists)) from None
        return product_view(product)

    @app.get("/products/{product_id}", response_model=Product, responses=responses(404, 503))
    def get_product(product_id: str) -> dict[str, Any]:
        product = products(bus.unit_of_work(SERVICE_NAME)).get(product_id)
        if product is None:
            raise HTTPException(status_code=404, detail=f"no product {product_id}")
        return product_view(product)

    @app.patch("/products/{product_id}", response_model=Product, responses=responses(401, 403, 404, 413, 422, 503))
    def change_price(product_id: str, request: ChangePrice, _: Caller = Depends(admin)) -> dict[str, Any]:
        """Admins only. Orders already placed keep the price they were placed at."""
        try:
            product = run_command(
                bus, SERVICE_NAME, lambda uow: handlers.change_price(uow, product_id=product_id, price=request.price))
        except UnknownProduct as unknown:
            raise HTTPException(status_code=404, detail=str(unknown)) from None
        return product_view(product)

    return app
