"""Requests and tokens per minute and requests at once, per key and per user.

Each limited subject has a window of ``WINDOW`` seconds that opens with its first request
and counts requests and tokens until it ends; the next request opens a new one. A request is
admitted only if every subject it counts against (its key, its key's user) has room, and
then counts against all of them at once, so that a refusal never uses anything up. Tokens
are counted at admission as the request's estimate (its prompt and ``max_tokens``) and
corrected to what the engine reported when it ends.

The counts live in one process: with several gateways, the leader's (a follower admits
through it, ``Shared``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from modelyard.accounts.identity import Limits
from modelyard.errors import RateLimitError

WINDOW = 60.0


@dataclass(slots=True)
class _Window:
    start: float
    requests: int = 0
    tokens: int = 0


@dataclass(slots=True)
class Admission:
    """What one admitted request counts against; ``finish`` it exactly once."""

    windows: list[tuple[_Window, Limits]] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    """OpenAI's ``x-ratelimit-*`` headers for the answer."""
    finished: bool = False
    remote: str = ""
    """Admitted by another gateway's limiter (``Shared``), under this name there."""


class Shared(Protocol):
    """A limiter in another process (a following gateway's way to the leader's)."""

    async def admit(self, subjects: Sequence[tuple[str, Limits]], tokens: int) -> Admission: ...

    def finish(self, admission: Admission, tokens: int) -> None: ...


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._in_flight: dict[str, int] = {}

    def admit(self, subjects: Sequence[tuple[str, Limits]], tokens: int) -> Admission:
        """Counts one request of up to ``tokens`` against ``subjects`` (``(name, limits)``),
        or raises ``RateLimitError`` (429) with ``Retry-After`` and the headers."""
        now = self._clock()
        admission = Admission(tokens=tokens)
        limited = [(name, limits) for name, limits in subjects if _limited(limits)]
        if not limited:
            return admission
        if len(self._windows) > 10_000:
            self._prune(now)
        for name, limits in limited:
            window = self._windows.get(name)
            if window is None or now >= window.start + WINDOW:
                window = self._windows[name] = _Window(now)
            admission.windows.append((window, limits))
            admission.subjects.append(name)
        for name, (window, limits) in zip(admission.subjects, admission.windows, strict=True):
            _check(window, limits, self._in_flight.get(name, 0), tokens, now)
        for name, (window, _) in zip(admission.subjects, admission.windows, strict=True):
            window.requests += 1
            window.tokens += tokens
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
        admission.headers = _headers(admission.windows, now)
        return admission

    def finish(self, admission: Admission, tokens: int) -> None:
        """The request is over and used ``tokens``: corrects the count, frees its place."""
        if admission.finished:
            return
        admission.finished = True
        for name, (window, _) in zip(admission.subjects, admission.windows, strict=True):
            left = self._in_flight.get(name, 1) - 1
            if left:
                self._in_flight[name] = left
            else:
                self._in_flight.pop(name, None)
            if self._windows.get(name) is window:  # still its window: count what it used
                window.tokens = max(0, window.tokens + tokens - admission.tokens)

    def _prune(self, now: float) -> None:
        for name, window in list(self._windows.items()):
            if now >= window.start + WINDOW:
                del self._windows[name]


def limited(subjects: Sequence[tuple[str, Limits]]) -> bool:
    """Whether any of ``subjects`` has a limit (else nothing needs counting)."""
    return any(_limited(limits) for _, limits in subjects)


def _limited(limits: Limits) -> bool:
    return limits.rpm is not None or limits.tpm is not None or limits.max_concurrent is not None


def _check(window: _Window, limits: Limits, in_flight: int, tokens: int, now: float) -> None:
    reset = window.start + WINDOW - now
    if limits.max_concurrent is not None and in_flight >= limits.max_concurrent:
        raise RateLimitError(
            f"Too many requests at once: {in_flight} running, the limit is "
            f"{limits.max_concurrent}. Retry when one has finished",
            retry_after=1,
            headers=_headers([(window, limits)], now),
        )
    if limits.rpm is not None and window.requests >= limits.rpm:
        raise RateLimitError(
            f"Rate limit reached: {limits.rpm} requests per minute. Retry in {reset:.0f}s",
            retry_after=reset,
            headers=_headers([(window, limits)], now),
        )
    if limits.tpm is not None:
        if tokens > limits.tpm:
            raise RateLimitError(
                f"Request too large: it may use up to {tokens} tokens, more than the "
                f"limit of {limits.tpm} tokens per minute. Send a shorter prompt or a "
                "smaller max_tokens",
                headers=_headers([(window, limits)], now),
            )
        if window.tokens + tokens > limits.tpm:
            raise RateLimitError(
                f"Rate limit reached: {limits.tpm} tokens per minute ({window.tokens} used, "
                f"this request may use up to {tokens}). Retry in {reset:.0f}s",
                retry_after=reset,
                headers=_headers([(window, limits)], now),
            )


def _headers(windows: Sequence[tuple[_Window, Limits]], now: float) -> dict[str, str]:
    """OpenAI's headers for the tightest of ``windows``, requests and tokens apart."""
    headers: dict[str, str] = {}
    requests = [(w, limit.rpm) for w, limit in windows if limit.rpm is not None]
    if requests:
        window, rpm = min(requests, key=lambda x: x[1] - x[0].requests)
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, rpm - window.requests))
        headers["x-ratelimit-reset-requests"] = duration(window.start + WINDOW - now)
    tokens = [(w, limit.tpm) for w, limit in windows if limit.tpm is not None]
    if tokens:
        window, tpm = min(tokens, key=lambda x: x[1] - x[0].tokens)
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, tpm - window.tokens))
        headers["x-ratelimit-reset-tokens"] = duration(window.start + WINDOW - now)
    return headers


def duration(seconds: float) -> str:
    """As OpenAI writes its reset times: ``250ms``, ``17s``, ``1m0s``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
