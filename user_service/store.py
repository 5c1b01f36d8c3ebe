"""Users as this service stores them, plus one document per email address: the claim that makes emails unique.

Two registrations of one address race on the same claim document; the unit of work's version check lets only one
commit, the other sees the claim on its retry."""

from __future__ import annotations

from uuid import UUID

from events.unit_of_work import UnitOfWork
from user_service.domain import User

USERS, EMAILS = "user", "email"


class Users:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def get(self, user_id: UUID) -> User | None:
        document = self._uow.get(USERS, str(user_id))
        return None if document is None else User.model_validate(document)

    def owner_of(self, email_key: str) -> str | None:
        claim = self._uow.get(EMAILS, email_key)
        return None if claim is None else claim["user_id"]

    def add(self, user: User) -> None:
        self._uow.put(USERS, str(user.id), user.model_dump(mode="json"))
        self._uow.put(EMAILS, user.email_key, {"user_id": str(user.id)})
