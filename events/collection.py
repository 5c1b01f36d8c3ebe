"""A typed view of one collection of a service's documents in a unit of work: the repository every store module
shares, so a service's `store.py` only says which model lives in which collection under which key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from pydantic import BaseModel

from events.unit_of_work import UnitOfWork

M = TypeVar("M", bound=BaseModel)


class Collection(Generic[M]):
    def __init__(self, uow: UnitOfWork, name: str, model: type[M], key: Callable[[M], str]) -> None:
        self.uow, self.name, self.model, self.key = uow, name, model, key

    def get(self, key: object) -> M | None:
        document = self.uow.get_json(self.name, str(key))
        return None if document is None else self.model.model_validate_json(document)

    def save(self, item: M) -> None:
        self.uow.put_json(self.name, self.key(item), item.model_dump_json())
