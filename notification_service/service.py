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


def dependencies() -> dict[str, Any]:
    return {"notification_log": NotificationLog(NotificationSettings().notification_log)}


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
