"""What the user service does. It reacts to no event: registering is a command from its HTTP edge."""

from __future__ import annotations

from events.catalog import UserRegistered
from events.unit_of_work import UnitOfWork
from user_service.domain import User
from user_service.store import Users


class EmailTaken(Exception):
    """The address already belongs to a user (its id is `user_id`)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"email already registered (user {user_id})")
        self.user_id = user_id


def register_user(uow: UnitOfWork, *, name: str, email: str) -> User:
    """The command behind `POST /users`: the user, its email claim and UserRegistered, in one step."""
    user = User(name=name, email=email)
    users = Users(uow)
    owner = users.owner_of(user.email_key)
    if owner is not None:
        raise EmailTaken(owner)
    users.add(user)
    uow.publish(UserRegistered(user_id=str(user.id), name=user.name, email=user.email), correlation_id=user.id)
    return user
