"""Request shapes of the accounts API: login, keys, users."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
]
"""User and key names: letters, digits and ``_.@-`` (no spaces, no quotes)."""
Password = Annotated[str, Field(max_length=1024)]
"""Checked for length again by the server; a longer one is refused before hashing."""
RoleName = Literal["admin", "user", "monitor"]
Globs = Annotated[list[Annotated[str, Field(min_length=1, max_length=512)]], Field(max_length=256)]
PerMinute = Annotated[int, Field(ge=1, le=10**9)]
Balance = Annotated[int, Field(ge=0, le=10**15)]


class _Strict(BaseModel):
    # strict: ``tpm: true`` or ``"5"`` is an error, not 1 or 5.
    model_config = ConfigDict(extra="forbid", strict=True)


class LoginRequest(_Strict):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Password


class SignupRequest(_Strict):
    username: Name
    password: Password


class KeyCreateRequest(_Strict):
    name: Name = "key"
    role: RoleName | None = None
    """Default: the user's role (a key of a user), else ``user``."""
    user: Name | None = None
    """The user the key belongs to (its limits, balance and models apply too)."""
    models: Globs | None = None
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] | None = None
    priority: Annotated[float, Field(gt=0, le=1000)] = 1.0
    balance: Balance | None = None
    expires_in: Annotated[float, Field(gt=0, le=100 * 365 * 86400)] | None = None
    """Seconds from now."""


class KeyUpdateRequest(_Strict):
    name: Name | None = None
    role: RoleName | None = None
    models: Globs | None = None
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] | None = None
    priority: Annotated[float, Field(gt=0, le=1000)] | None = None
    balance: Balance | None = None
    add_balance: Annotated[int, Field(ge=-(10**15), le=10**15)] | None = None
    expires_in: Annotated[float, Field(gt=0, le=100 * 365 * 86400)] | None = None
    enabled: bool | None = None
    clear: list[Literal["models", "rpm", "tpm", "max_concurrent", "balance", "expires"]] = []
    """Limits to remove."""


class UserCreateRequest(_Strict):
    name: Name
    password: Password | None = None
    role: RoleName = "user"
    models: Globs | None = None
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] | None = None
    balance: Balance | None = None


class UserUpdateRequest(_Strict):
    password: Password | None = None
    role: RoleName | None = None
    models: Globs | None = None
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] | None = None
    balance: Balance | None = None
    add_balance: Annotated[int, Field(ge=-(10**15), le=10**15)] | None = None
    enabled: bool | None = None
    clear: list[Literal["models", "rpm", "tpm", "max_concurrent", "balance"]] = []
