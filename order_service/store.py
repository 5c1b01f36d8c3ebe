"""Orders as this service stores them: documents in its unit of work, nobody else's business."""

from __future__ import annotations

from uuid import UUID

from events.unit_of_work import UnitOfWork
from order_service.domain import Order

COLLECTION = "order"


class Orders:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def get(self, order_id: UUID) -> Order | None:
        document = self._uow.get(COLLECTION, str(order_id))
        return None if document is None else Order.model_validate(document)

    def save(self, order: Order) -> None:
        self._uow.put(COLLECTION, str(order.id), order.model_dump(mode="json"))
