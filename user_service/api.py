"""The HTTP edge of the user service: register a user, read one back."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from pydantic_settings import SettingsConfigDict

from events import http
from events.http import Bus, answer_validation_errors_readably, health, run_command
from user_service.domain import Email, EmailTaken, Name, User
from user_service.handlers import register_user
from user_service.store import users

SERVICE_NAME = "user_service"


class ApiSettings(http.ApiSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_USER_API_", extra="ignore")

    port: int = 5004


class RegisterUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    email: Email


def user_view(user: User) -> dict[str, Any]:
    return user.model_dump(mode="json")


def create_app(bus: Bus) -> FastAPI:
    app = FastAPI(title="shop: user service", version="1")
    answer_validation_errors_readably(app)
    health(app)

    @app.post("/users", status_code=201)
    def register(request: RegisterUser) -> dict[str, Any]:
        # A concurrent registration of the same address wins the claim; the retry of this one sees it (409).
        try:
            user = run_command(
                bus, SERVICE_NAME, lambda uow: register_user(uow, name=request.name, email=request.email))
        except EmailTaken as taken:
            raise HTTPException(status_code=409, detail=str(taken)) from None
        return user_view(user)

    @app.get("/users/{user_id}")
    def get_user(user_id: UUID) -> dict[str, Any]:
        user = users(bus.unit_of_work(SERVICE_NAME)).get(user_id)
        if user is None:
            raise HTTPException(status_code=404, detail=f"no user {user_id}")
        return user_view(user)

    return app
