"""Rate limits with a manual clock: exact counts per window, and OpenAI's headers."""

from __future__ import annotations

import pytest

from modelyard.accounts.identity import Limits
from modelyard.accounts.limits import WINDOW, RateLimiter, duration
from modelyard.errors import RateLimitError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limits_allow_exactly_rpm_requests_per_window() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    subject = [("key:a", Limits(rpm=3))]
    allowed = [limiter.admit(subject, 0) for _ in range(3)]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in allowed] == ["2", "1", "0"]
    assert allowed[0].headers["x-ratelimit-limit-requests"] == "3"
    assert allowed[0].headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 20
    with pytest.raises(RateLimitError) as refused:
        limiter.admit(subject, 0)
    assert refused.value.status == 429
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.retry_after == pytest.approx(40)
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.headers["x-ratelimit-reset-requests"] == "40s"
    clock.now += 40  # the window is over: three more
    for _ in range(3):
        limiter.admit(subject, 0)
    with pytest.raises(RateLimitError):
        limiter.admit(subject, 0)


def test_limits_count_tokens_and_correct_them_when_the_request_ends() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    subject = [("key:a", Limits(tpm=100))]
    first = limiter.admit(subject, 60)  # may use 60
    assert first.headers["x-ratelimit-remaining-tokens"] == "40"
    with pytest.raises(RateLimitError, match="100 tokens per minute"):
        limiter.admit(subject, 50)
    limiter.finish(first, 10)  # used only 10: 90 left
    second = limiter.admit(subject, 50)
    assert second.headers["x-ratelimit-remaining-tokens"] == "40"
    assert second.headers["x-ratelimit-limit-tokens"] == "100"
    with pytest.raises(RateLimitError, match="Request too large"):
        limiter.admit(subject, 101)


def test_limits_bound_requests_at_once_across_windows() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    subject = [("key:a", Limits(max_concurrent=2))]
    a, b = limiter.admit(subject, 0), limiter.admit(subject, 0)
    with pytest.raises(RateLimitError, match="at once"):
        limiter.admit(subject, 0)
    clock.now += WINDOW * 2  # a new window does not forget what is running
    with pytest.raises(RateLimitError, match="at once"):
        limiter.admit(subject, 0)
    limiter.finish(a, 0)
    limiter.finish(a, 0)  # twice is once
    c = limiter.admit(subject, 0)
    with pytest.raises(RateLimitError):
        limiter.admit(subject, 0)
    limiter.finish(b, 0)
    limiter.finish(c, 0)


def test_limits_of_a_user_hold_across_its_keys_and_a_refusal_uses_nothing() -> None:
    limiter = RateLimiter(Clock())
    user = ("user:1", Limits(rpm=2))
    limiter.admit([("key:a", Limits(rpm=5)), user], 0)
    limiter.admit([("key:b", Limits()), user], 0)
    with pytest.raises(RateLimitError):
        limiter.admit([("key:a", Limits(rpm=5)), user], 0)
    # key a was not charged for the refused request: 4 left of its 5 once the user allows
    other = RateLimiter(Clock())
    other.admit([("key:a", Limits(rpm=1)), ("user:1", Limits(rpm=0 + 1))], 0)
    with pytest.raises(RateLimitError):
        other.admit([("key:b", Limits(rpm=5)), ("user:1", Limits(rpm=1))], 0)
    admitted = other.admit([("key:b", Limits(rpm=5))], 0)
    assert admitted.headers["x-ratelimit-remaining-requests"] == "4"


def test_limits_without_any_limit_give_no_headers() -> None:
    assert RateLimiter(Clock()).admit([("key:a", Limits())], 10).headers == {}


def test_limits_write_reset_times_as_openai_does() -> None:
    assert [duration(x) for x in (0.25, 1, 17.2, 60, 61)] == ["250ms", "1s", "18s", "1m0s",
                                                              "1m1s"]  # fmt: skip
