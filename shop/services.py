"""Every service of the shop, in the order they are started."""

from events.bus import ServiceSpec
from notification_service.service import SERVICE as NOTIFICATION
from order_service.service import SERVICE as ORDER
from payment_service.service import SERVICE as PAYMENT

SERVICES: dict[str, ServiceSpec] = {spec.name: spec for spec in (ORDER, PAYMENT, NOTIFICATION)}
