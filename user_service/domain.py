"""The user. Pure Python: no bus, no storage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^\S(.*\S)?$")]
"""As given: no leading or trailing space (refused, not trimmed, so the schema says exactly what is accepted)."""
Email = Annotated[EmailStr, StringConstraints(max_length=254)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
Role = Literal["customer", "admin"]

# Argon2id at OWASP's minimum cost (19 MiB, 2 passes): a stolen store does not give the passwords away.
PASSWORDS = PasswordHash((Argon2Hasher(time_cost=2, memory_cost=19456, parallelism=1),))


class User(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UUID = Field(default_factory=uuid4)
    name: Name
    email: Email
    role: Role = "customer"
    password_hash: str = Field(repr=False)
    registered_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def register(cls, name: str, email: str, password: str, role: Role = "customer") -> User:
        return cls(name=name, email=email, role=role, password_hash=PASSWORDS.hash(password))

    def has_password(self, password: str) -> bool:
        return PASSWORDS.verify(password, self.password_hash)

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
    """The address already belongs to a user (who is not named: that would tell a stranger who is registered)."""

    def __init__(self) -> None:
        super().__init__("this email address is already registered")
