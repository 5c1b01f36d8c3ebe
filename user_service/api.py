"""The HTTP edge of the user service: register, sign in (an access token), read one's own record."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, FastAPI, Form, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events import http
from events.http import Bus, Caller, Edge, Token, authenticate, prepare, responses, run_command
from user_service.domain import Email, EmailTaken, Name, Password, User
from user_service.handlers import authenticate as sign_in
from user_service.handlers import register_user
from user_service.store import users

SERVICE_NAME = "user_service"


class ApiSettings(http.ApiSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_USER_API_", extra="ignore")

    port: int = 5004


class AdminSettings(BaseSettings):
    """An admin created when the user API starts, if configured and not registered yet (or `shop users
    create-admin`)."""

    model_config = SettingsConfigDict(env_prefix="SHOP_ADMIN_", extra="ignore")

    email: str | None = None
    password: str | None = None


class RegisterUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    email: Email
    password: Password = Field(description="8 to 128 characters; kept only as its Argon2 hash")


class UserView(BaseModel):
    id: UUID
    name: str
    email: str
    role: str


def user_view(user: User) -> dict[str, Any]:
    return UserView.model_validate(user, from_attributes=True).model_dump(mode="json")


def create_app(bus: Bus, edge: Edge) -> FastAPI:
    app = FastAPI(title="shop: user service", version="1")
    prepare(app, edge)
    caller = authenticate(edge)

    @app.post("/users", status_code=201, response_model=UserView, responses=responses(409, 413, 422, 503))
    def register(request: RegisterUser) -> dict[str, Any]:
        """Anyone may register, as a customer. A second registration of an address is refused without saying whose
        it is. A concurrent registration of the same address wins the claim; the retry of this one sees it (409)."""
        try:
            user = run_command(bus, SERVICE_NAME, lambda uow: register_user(
                uow, name=request.name, email=request.email, password=request.password))
        except EmailTaken as taken:
            raise HTTPException(status_code=409, detail=str(taken)) from None
        return user_view(user)

    @app.post("/token", response_model=Token, responses=responses(401, 413, 422, 503))
    def token(username: Annotated[str, Form(min_length=1, max_length=254, description="the email address")],
              password: Annotated[str, Form(min_length=1, max_length=128)]) -> Token:
        """OAuth2 password flow: an access token (a JWT signed by this service) for the email and password."""
        user = sign_in(bus.unit_of_work(SERVICE_NAME), email=username, password=password)
        if user is None:
            raise HTTPException(status_code=401, detail="wrong email or password",
                                headers={"WWW-Authenticate": "Bearer"})
        return Token(access_token=edge.issue(str(user.id), user.role), expires_in=edge.settings.token_ttl)

    @app.get("/users/{user_id}", response_model=UserView, responses=responses(401, 404, 422, 503))
    def get_user(user_id: UUID, me: Caller = Depends(caller)) -> dict[str, Any]:
        """One's own record (an admin: anyone's). Anyone else's is not found, whether it exists or not."""
        user = users(bus.unit_of_work(SERVICE_NAME)).get(user_id) if me.may_act_for(str(user_id)) else None
        if user is None:
            raise HTTPException(status_code=404, detail=f"no user {user_id}")
        return user_view(user)

    return app


def ensure_admin(bus: Bus, email: str, password: str, name: str = "Admin") -> bool:
    """Register an admin unless the address is taken; True when one was registered now."""
    try:
        run_command(bus, SERVICE_NAME, lambda uow: register_user(uow, name=name, email=email, password=password,
                                                                  role="admin"))
    except EmailTaken:
        return False
    return True
