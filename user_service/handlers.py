"""What the user service does. It reacts to no event: registering is a command from its HTTP edge."""

from __future__ import annotations

from events.catalog import UserRegistered
from events.unit_of_work import UnitOfWork
from user_service.domain import PASSWORDS, EmailClaim, EmailTaken, Role, User
from user_service.store import email_claims, users


def register_user(uow: UnitOfWork, *, name: str, email: str, password: str, role: Role = "customer") -> User:
    """The command behind `POST /users` (and `shop users create-admin`): the user, its email claim and
    UserRegistered, in one step. The password is kept only as its hash, and never travels in an event."""
    user = User.register(name, email, password, role)
    claims = email_claims(uow)
    if claims.get(user.email_key) is not None:
        raise EmailTaken()
    users(uow).save(user)
    claims.save(EmailClaim(email_key=user.email_key, user_id=str(user.id)))
    uow.publish(UserRegistered(user_id=str(user.id), name=user.name, email=user.email), correlation_id=user.id)
    return user


UNKNOWN_USER_HASH = PASSWORDS.hash("no user has this password")


def authenticate(uow: UnitOfWork, *, email: str, password: str) -> User | None:
    """The user with this email and password, or None (the same None whichever of the two is wrong)."""
    claim = email_claims(uow).get(email.lower())
    user = users(uow).get(claim.user_id) if claim else None
    if user is None:
        PASSWORDS.verify(password, UNKNOWN_USER_HASH)  # as long as for a known address: no enumeration by timing
        return None
    return user if user.has_password(password) else None
