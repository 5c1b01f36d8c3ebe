"""The user service as the bus sees it: it publishes UserRegistered from its HTTP edge and reacts to no event, so
it has no queue to consume and runs no worker (`shop.services.CONSUMERS` leaves it out); only its API runs."""

from events.bus import ServiceSpec
from events.catalog import UserRegistered

SERVICE = ServiceSpec(name="user_service", handlers={}, publishes=(UserRegistered,))
