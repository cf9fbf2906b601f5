"""OpenAI's legacy ``/v1/completions`` answer shape, from llama.cpp's.

llama.cpp answers completions with the chat API's ``logprobs`` (``{"content": [{token,
logprob, top_logprobs: [...]}]}``); OpenAI's clients read the legacy one: ``tokens``,
``token_logprobs``, ``top_logprobs`` (token → logprob maps) and ``text_offset``. ``echo``
puts the prompt before the text, as OpenAI does.
"""

from __future__ import annotations

import json
from typing import Any

from modelyard.dialect.base import Dialect, parse_answer


class LegacyCompletion(Dialect):
    """Reshapes a llama.cpp completion; ``echo``: the prompt comes first."""

    def __init__(self, model: str, echo: str | None, usage: bool) -> None:
        super().__init__(model)
        self._echo = echo
        self._wants_usage = usage
        """The client asked for the stream's usage chunk (the gateway always does)."""
        self._offsets: dict[int, int] = {}
        """Per choice: characters of text so far (``text_offset`` continues from there)."""

    def _choice(self, choice: dict[str, Any], first: bool) -> None:
        index = int(choice.get("index", 0))
        offset = self._offsets.get(index, 0)
        text = choice.get("text") or ""
        if first and self._echo is not None:
            choice["text"] = self._echo + text
            offset += len(self._echo)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            choice["logprobs"], offset = _legacy(logprobs["content"], offset)
        else:
            offset += len(text)
        self._offsets[index] = offset

    def answer(self, body: bytes) -> bytes:
        data = parse_answer(body)
        for choice in data["choices"]:
            self._choice(choice, first=True)
        return json.dumps(data).encode()

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if chunk.get("choices") == [] and not self._wants_usage:
            return b""
        for choice in chunk.get("choices") or []:
            first = int(choice.get("index", 0)) not in self._offsets
            self._choice(choice, first)
        return super().feed(chunk)


def _legacy(content: list[dict[str, Any]], offset: int) -> tuple[dict[str, Any], int]:
    tokens, logprobs, tops, offsets = [], [], [], []
    for item in content:
        token = str(item.get("token", ""))
        tokens.append(token)
        logprobs.append(item.get("logprob"))
        tops.append(
            {str(t.get("token", "")): t.get("logprob") for t in item.get("top_logprobs") or []}
        )
        offsets.append(offset)
        offset += len(token)
    shaped = {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }
    return shaped, offset
