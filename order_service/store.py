"""What this service stores: its orders, and its own copy of the product catalogue (a projection of the product
service's events). Documents in its unit of work, nobody else's business."""

from __future__ import annotations

from uuid import UUID

from events.unit_of_work import UnitOfWork
from order_service.domain import CataloguedProduct, Order

COLLECTION = "order"
CATALOGUE = "product"


class Orders:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def get(self, order_id: UUID) -> Order | None:
        document = self._uow.get(COLLECTION, str(order_id))
        return None if document is None else Order.model_validate(document)

    def save(self, order: Order) -> None:
        self._uow.put(COLLECTION, str(order.id), order.model_dump(mode="json"))


class Catalogue:
    """The products as this service last heard of them. Prices come from here, so placing an order needs no call to
    the product service (which may be down); it may lag behind by the events still in this service's queue."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def get(self, product_id: str) -> CataloguedProduct | None:
        document = self._uow.get(CATALOGUE, product_id)
        return None if document is None else CataloguedProduct.model_validate(document)

    def save(self, product: CataloguedProduct) -> None:
        self._uow.put(CATALOGUE, product.product_id, product.model_dump(mode="json"))
