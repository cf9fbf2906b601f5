"""The one rule for how much a request may generate.

Every API and engine has its own ways to say how long an answer may be: OpenAI's
``max_tokens`` and ``max_completion_tokens``, llama.cpp's ``n_predict`` (which wins over
``max_tokens`` there), Ollama's ``num_predict``, Anthropic's ``max_tokens`` and the Responses
API's ``max_output_tokens`` (the dialects turn these into ``max_tokens``), and how many
answers: ``n``, ``best_of``, llama.cpp's ``n_cmpl``, or a list of prompts. ``generation``
reads all of them from the payload that goes to the engine and yields one ``Length``: the
tokens each answer may have and how many answers there are. ``Length.apply`` then writes
that limit back as the payload's only length field, so the engine can never generate more
than the balance reserved for (``ignore_eos`` included: it only changes where, under the
limit, an answer stops). Where the request sets no limit, the model's context is the limit
(llama.cpp's, which the catalog sets; other engines stop at their own, and the balance
reserves the catalog's ``ctx``).

Several fields that disagree: the smallest limit is the one sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelyard.errors import InvalidRequestError

LIMITS = ("max_tokens", "max_completion_tokens", "n_predict")
"""Fields that bound each answer's tokens (after the dialects' translations)."""
COUNTS = ("n", "best_of", "n_cmpl")
"""Fields that ask for more than one answer per prompt."""
_MAX_COUNT = 16


@dataclass(slots=True)  # not frozen: made on every request, and frozen costs 1.3 µs
class Length:
    per_answer: int
    """The tokens each answer may have: what the engine is sent."""
    answers: int
    """How many answers the engine writes (choices times prompts)."""
    per_prompt: int
    """Answers to each prompt (``n``)."""
    prompt: int
    """A bound on the prompt tokens it reads (from the body's size)."""
    asked: bool
    """Whether the request set a limit itself (else it is the context)."""

    @property
    def prompts(self) -> int:
        return self.answers // self.per_prompt

    @property
    def worst(self) -> int:
        """The most tokens it can be charged: its prompt and every answer at full length."""
        return self.prompt + self.per_answer * self.answers

    @property
    def expected(self) -> int:
        """What it is expected to use, for the per-minute token limit: the worst case when
        it set a limit, else its prompt alone (a context's worth would refuse most
        requests on a tpm limit)."""
        return self.worst if self.asked else self.prompt

    def apply(self, payload: dict[str, Any], *, sized: bool) -> None:
        """Makes ``per_answer`` the payload's one length field. ``sized``: the engine's
        context is the one the catalog gave it (llama.cpp's), so it is the limit when the
        request set none; other engines are not sent a limit the request did not set (vLLM
        refuses one past what its context has left)."""
        for name in LIMITS:
            payload.pop(name, None)
        if self.asked or sized:
            payload["max_tokens"] = self.per_answer


def generation(payload: dict[str, Any], *, ctx: int, prompt: int) -> Length:
    """The ``Length`` of a chat or completion ``payload`` for a model with ``ctx`` tokens of
    context per slot; ``prompt``: a bound on its prompt tokens. Invalid values are a 400
    naming the field."""
    limits = [value for name in LIMITS if (value := _limit(payload, name)) is not None]
    per_answer = min([ctx, *limits])
    per_prompt = max([1, *(c for name in COUNTS if (c := _count(payload, name)) is not None)])
    prompts = _prompts(payload.get("prompt"))
    return Length(
        per_answer=per_answer,
        answers=per_prompt * prompts,
        per_prompt=per_prompt,
        prompt=min(prompt, ctx * prompts),
        asked=bool(limits),
    )


def _limit(payload: dict[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be an integer", param=name)
    if value < 0:
        if name == "n_predict" and value in (-1, -2):  # llama.cpp's "no limit"
            return None
        raise InvalidRequestError(f"{name} must be 0 or more", param=name)
    return value


def _count(payload: dict[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_COUNT:
        raise InvalidRequestError(f"{name} must be an integer from 1 to {_MAX_COUNT}", param=name)
    return value


def _prompts(prompt: object) -> int:
    """How many prompts a completion's ``prompt`` holds (a chat has one)."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)  # strings, or token lists
    return 1
