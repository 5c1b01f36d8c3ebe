"""The notification service as the bus sees it, and the dependencies its handlers get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.bus import Projection, ServiceSpec
from events.catalog import (
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    UserRegistered,
)
from notification_service import handlers, store
from notification_service.notification_log import NotificationLog


class NotificationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOP_", extra="ignore")

    notification_log: Path = Field(Path("var/notifications.log"), description="one JSON notification per line")
    notification_log_remember: int = Field(
        100_000, ge=1, description="ids of the log's most recent lines a worker keeps to refuse a second line for a "
        "redelivered notification (its memory bound); must cover the lines written within the redelivery window")


def dependencies() -> dict[str, Any]:
    settings = NotificationSettings()
    return {"notification_log": NotificationLog(settings.notification_log, settings.notification_log_remember)}


CUSTOMERS = Projection(collection=store.CUSTOMERS, handlers={UserRegistered: handlers.remember_customer})

SERVICE = ServiceSpec(
    name="notification_service",
    handlers={
        OrderConfirmed: handlers.notify_customer,
        OrderCancelled: handlers.notify_customer,
        **CUSTOMERS.handlers,
    },
    dependencies=dependencies,
    projections=(CUSTOMERS,),
    publishes=(NotificationSent,),
)
