"""Passwords (argon2id) and the signed session tokens (JWT) a login returns."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MAX_PASSWORD = 1024
"""Characters; longer ones are refused before any hashing (a 1 MB password costs nothing)."""
MIN_PASSWORD = 8
_hasher = PasswordHasher()  # argon2id, RFC 9106's low-memory profile
_ALGORITHM = "HS256"
_AUDIENCE = "modelyard"


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches; with no stored hash the same work is done anyway, so that
    timing does not tell which user names exist."""

    def check() -> bool:
        try:
            return _hasher.verify(stored or _dummy(), password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


@functools.cache
def _dummy() -> str:
    """A hash to check against when there is none: made once, in a thread after the server
    has started (``prepare``), not at import (an argon2 hash takes 0.2 to 0.3 s, which every
    start would wait for)."""
    return _hasher.hash("no such user")


def prepare() -> asyncio.Future[str]:
    """Makes the hash checked against for unknown users in a thread (so that the first
    login of an unknown user takes no longer than any other)."""
    return asyncio.ensure_future(asyncio.to_thread(_dummy))


@dataclass(frozen=True)
class Session:
    user_id: int
    username: str
    expires_at: float


class Sessions:
    """Issues and checks session tokens signed with the server's secret (kept in the
    database, so that every gateway on it accepts them)."""

    def __init__(self, secret: str, ttl: float) -> None:
        self._secret = secret
        self.ttl = ttl

    def issue(self, user_id: int, username: str, now: float | None = None) -> tuple[str, float]:
        now = time.time() if now is None else now
        expires = now + self.ttl
        claims = {
            "sub": str(user_id),
            "name": username,
            "iat": int(now),
            "exp": int(expires),
            "aud": _AUDIENCE,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM), expires

    def check(self, token: str) -> Session | None:
        """The session a valid, unexpired token stands for, else ``None``."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                audience=_AUDIENCE,
                options={"require": ["exp", "sub"]},
            )
            return Session(int(claims["sub"]), str(claims.get("name", "")), float(claims["exp"]))
        except (jwt.PyJWTError, ValueError, KeyError):
            return None


def looks_like_session(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")
