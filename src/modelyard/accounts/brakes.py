"""Brakes on guessing passwords and on signing up in bulk.

Logins: each user name and each client address may get a password wrong ``attempts`` times
in a row; after that every further try must wait, 1 s after the next miss, doubling with
each miss up to ``lockout``, and is refused with 429 and ``Retry-After`` until then (right
password or not, so a guesser learns nothing while it waits). A right password clears its
user name's and its address's count. Counting by name too means that many addresses
guessing one password are slowed as much as one; counting by address, that one address
guessing many names is. The price is that someone who knows a user name can make its owner
wait (never longer than ``lockout``); an admin's key works all the while.

Sign-ups: at most ``per_hour`` from one client address in any hour.

The counts live in this process, like the rate limits (``accounts.limits``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from modelyard.errors import RateLimitError

_KEPT = 10_000
"""Subjects tracked before the oldest that are not waiting are forgotten."""
_HOUR = 3600.0


@dataclass(slots=True)
class _Misses:
    count: int = 0
    until: float = 0.0


class LoginBrake:
    def __init__(
        self, attempts: int, lockout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.attempts = attempts
        self.lockout = lockout
        self._clock = clock
        self._misses: dict[str, _Misses] = {}

    def check(self, subjects: Iterable[str]) -> None:
        """Raises 429 with ``Retry-After`` while any of ``subjects`` must wait."""
        now = self._clock()
        wait = max((m.until - now for s in subjects if (m := self._misses.get(s))), default=0.0)
        if wait > 0:
            raise RateLimitError(
                f"Too many wrong passwords: try again in {math.ceil(wait)}s",
                retry_after=wait,
            )

    def missed(self, subjects: Iterable[str]) -> None:
        now = self._clock()
        if len(self._misses) > _KEPT:
            self._misses = {s: m for s, m in self._misses.items() if m.until > now}
        for subject in subjects:
            misses = self._misses.setdefault(subject, _Misses())
            misses.count += 1
            over = misses.count - self.attempts
            if over >= 0:
                misses.until = now + min(self.lockout, 2.0**over)

    def passed(self, subjects: Iterable[str]) -> None:
        for subject in subjects:
            self._misses.pop(subject, None)


class SignupBrake:
    def __init__(self, per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour = per_hour
        self._clock = clock
        self._made: dict[str, deque[float]] = {}

    def admit(self, address: str) -> None:
        """Counts one sign-up from ``address``, or raises 429 with ``Retry-After``."""
        now = self._clock()
        if len(self._made) > _KEPT:
            self._made = {a: d for a, d in self._made.items() if d and d[-1] > now - _HOUR}
        made = self._made.setdefault(address, deque())
        while made and made[0] <= now - _HOUR:
            made.popleft()
        if len(made) >= self.per_hour:
            wait = made[0] + _HOUR - now if made else _HOUR
            raise RateLimitError(
                f"Too many sign-ups from this address ({self.per_hour} an hour): try again in "
                f"{math.ceil(wait / 60)} min",
                retry_after=wait,
            )
        made.append(now)
