"""What the user service does. It reacts to no event: registering is a command from its HTTP edge."""

from __future__ import annotations

from events.catalog import UserRegistered
from events.unit_of_work import UnitOfWork
from user_service.domain import EmailClaim, EmailTaken, User
from user_service.store import email_claims, users


def register_user(uow: UnitOfWork, *, name: str, email: str) -> User:
    """The command behind `POST /users`: the user, its email claim and UserRegistered, in one step."""
    user = User(name=name, email=email)
    claims = email_claims(uow)
    claim = claims.get(user.email_key)
    if claim is not None:
        raise EmailTaken(claim.user_id)
    users(uow).save(user)
    claims.save(EmailClaim(email_key=user.email_key, user_id=str(user.id)))
    uow.publish(UserRegistered(user_id=str(user.id), name=user.name, email=user.email), correlation_id=user.id)
    return user
