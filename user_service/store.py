"""Users as this service stores them, plus one document per email address: the claim that makes emails unique.

Two registrations of one address race on the same claim document; the unit of work's version check lets only one
commit, the other sees the claim on its retry."""

from __future__ import annotations

from events.collection import Collection
from events.unit_of_work import UnitOfWork
from user_service.domain import EmailClaim, User

USERS, EMAILS = "user", "email"


def users(uow: UnitOfWork) -> Collection[User]:
    return Collection(uow, USERS, User, key=lambda user: str(user.id))


def email_claims(uow: UnitOfWork) -> Collection[EmailClaim]:
    return Collection(uow, EMAILS, EmailClaim, key=lambda claim: claim.email_key)
