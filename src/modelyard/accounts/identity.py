"""Who is asking: roles, API keys (made, hashed and checked), and the ``Principal`` a
request runs as."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

KEY_PREFIX = "my-"
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_LETTERS = frozenset(_ALPHABET)
_ID_LENGTH = 8
_SECRET_LENGTH = 32
KEY_LENGTH = len(KEY_PREFIX) + _ID_LENGTH + _SECRET_LENGTH
"""``my-`` + an 8-character id (shown in listings) + a 32-character secret: 238 random bits."""


class Role(StrEnum):
    ADMIN = "admin"
    """Everything: keys, users, load/unload, pull/rm, config."""
    USER = "user"
    """Inference on the allowed models, their list, its own usage."""
    MONITOR = "monitor"
    """Read-only status, metrics, events and logs; no inference."""


def new_key() -> tuple[str, str, str]:
    """A fresh key: ``(key, id, hash)``. Only the id and the hash are ever stored."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_ID_LENGTH + _SECRET_LENGTH))
    key = KEY_PREFIX + body
    return key, body[:_ID_LENGTH], hash_key(key)


def hash_key(key: str) -> str:
    """SHA-256 is enough: a key has 238 random bits, so nothing can be guessed from its hash
    (passwords, which people choose, get argon2id instead)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_id(key: str) -> str | None:
    """The id part of a well-formed key, else ``None``."""
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return None
    body = key[len(KEY_PREFIX) :]
    if not _LETTERS.issuperset(body):
        return None
    return body[:_ID_LENGTH]


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)


def display(key_id: str) -> str:
    """How a key is shown after it was created: ``my-Ab3dE9xQ…``."""
    return f"{KEY_PREFIX}{key_id}…"


@dataclass(frozen=True)
class Limits:
    """Per minute and at once; ``None``: no limit."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True)
class Principal:
    """Whom a request is served for. ``LOCAL`` when accounts are off (everything allowed)."""

    role: Role
    kind: str
    """``key``, ``session`` or ``local``."""
    key_id: str | None = None
    key_name: str | None = None
    user_id: int | None = None
    username: str | None = None
    models: tuple[str, ...] = ()
    """Globs of the names and aliases it may use; empty: all."""
    user_models: tuple[str, ...] = ()
    """Its user's globs, which apply too."""
    key_limits: Limits = field(default_factory=Limits)
    user_limits: Limits = field(default_factory=Limits)
    priority: float = 1.0
    key_balance: bool = False
    """Whether its key has a token balance to charge."""
    user_balance: bool = False

    @property
    def client(self) -> str:
        """Its identity in the fair queue: the key, else the user."""
        if self.key_id is not None:
            return f"key:{self.key_id}"
        return f"user:{self.user_id}" if self.user_id is not None else ""

    def may_use(self, names: Iterable[str]) -> bool:
        """Whether one of a model's ``names`` (name and aliases) is allowed."""
        names = list(names)
        return _allowed(self.models, names) and _allowed(self.user_models, names)


LOCAL = Principal(Role.ADMIN, "local")


def _allowed(globs: tuple[str, ...], names: list[str]) -> bool:
    if not globs:
        return True
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs for name in names)
