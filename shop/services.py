"""Every service of the shop (in the order they are started), those among them that consume events, and their
HTTP APIs."""

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI

from events.bus import ServiceSpec
from events.http import ApiSettings, Bus, Edge
from notification_service.service import SERVICE as NOTIFICATION
from order_service import api as order_api
from order_service.service import SERVICE as ORDER
from payment_service.service import SERVICE as PAYMENT
from product_service import api as product_api
from product_service.service import SERVICE as PRODUCT
from user_service import api as user_api
from user_service.service import SERVICE as USER

SERVICES: dict[str, ServiceSpec] = {spec.name: spec for spec in (ORDER, PRODUCT, PAYMENT, NOTIFICATION, USER)}

CONSUMERS: dict[str, ServiceSpec] = {name: spec for name, spec in SERVICES.items() if spec.handlers}
"""The services that react to events: one queue and one worker each. The user service only publishes (from its
API): a worker for it would watch an empty queue."""


@dataclass(frozen=True)
class ServiceApi:
    """A service's HTTP edge: its process name (`shop up`, compose), its app factory and where it listens."""

    process_name: str
    create_app: Callable[[Bus, Edge], FastAPI]
    settings: type[ApiSettings]


APIS: dict[str, ServiceApi] = {
    "order_service": ServiceApi("order_api", order_api.create_app, order_api.ApiSettings),
    "user_service": ServiceApi("user_api", user_api.create_app, user_api.ApiSettings),
    "product_service": ServiceApi("product_api", product_api.create_app, product_api.ApiSettings),
}


def handled_by() -> dict[str, list[str]]:
    """event type -> the services that handle it (whose queues receive it): `shop trace` and the console show it."""
    from events.catalog import EVENT_TYPES

    return {model.type_name: [spec.name for spec in SERVICES.values() if model in spec.handlers]
            for model in EVENT_TYPES.values()}
