"""The user. Pure Python: no bus, no storage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
# A deliberately plain check (something@domain.tld): proving an address works takes a confirmation mail, not a regex.
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
]


class User(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UUID = Field(default_factory=uuid4)
    name: Name
    email: Email
    registered_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def email_key(self) -> str:
        """Addresses differing only in case reach the same person: uniqueness is checked on this form."""
        return self.email.lower()


class EmailClaim(BaseModel):
    """Who owns an email address (its lower-case form): one document per address."""

    model_config = ConfigDict(extra="forbid")

    email_key: str
    user_id: str


class EmailTaken(Exception):
    """The address already belongs to a user (its id is `user_id`)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"email already registered (user {user_id})")
        self.user_id = user_id
