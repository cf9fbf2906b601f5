"""A whole answer made from an engine's stream, gathered as it comes.

The gateway asks llama.cpp for a stream even when the client asked for the answer whole:
- llama.cpp's whole answer with several choices (``n``, a list of prompts) reports the usage
  of one of them; streamed, each chunk says how far its own choice has got (``Tally``);
- a client that leaves while a whole answer is made is charged what was generated up to
  then, and the engine stops at its next token (a write to a closed connection fails; a
  whole answer's slot was seen to run to its end, uncharged, after its client left).
"""

from __future__ import annotations

from typing import Any

import orjson

from modelyard.api.tally import HELD, Tally
from modelyard.dialect.base import engine_error, sse_events, stream_chunks
from modelyard.errors import RunnerError

_OBJECTS = {"chat.completion.chunk": "chat.completion", "text_completion": "text_completion"}


class Gathering:
    """The whole answer of an OpenAI chat or completion stream, fed as it comes."""

    __slots__ = ("_choices", "_head", "_held", "_tally", "_timings")

    def __init__(self, tally: Tally) -> None:
        self._tally = tally
        """Told every chunk: it counts the request's tokens, also of a stream cut short."""
        self._held = b""
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._timings: object = None
        """llama.cpp's figures, of the latest chunk that had them."""

    def feed(self, data: bytes) -> None:
        """Some bytes of the stream, cut anywhere; an error event is the engine's failure."""
        events, held = sse_events(self._held + data if self._held else data)
        self._held = held[-HELD:]
        for chunk in stream_chunks(events):
            self._tally.note(chunk)
            failure = engine_error(chunk)
            if failure is not None:
                raise RunnerError(f"model server failed: {failure}")
            if not self._head:
                self._head = chunk
            if "timings" in chunk:
                self._timings = chunk["timings"]
            for choice in chunk.get("choices") or []:
                if isinstance(choice, dict):
                    _merge(self._choices.setdefault(_index(choice), {}), choice)

    def answer(self) -> bytes:
        """The whole answer, with the usage of every choice."""
        head = self._head
        if not head:
            raise RunnerError("model server sent an empty stream")
        prompt, completion = self._tally.tokens()
        chat = head.get("object") == "chat.completion.chunk"
        answer: dict[str, Any] = {
            "id": head.get("id"),
            "object": _OBJECTS.get(str(head.get("object")), head.get("object")),
            "created": head.get("created"),
            "model": head.get("model"),
            "system_fingerprint": head.get("system_fingerprint"),
            "choices": [_choice(i, self._choices[i], chat) for i in sorted(self._choices)],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        timings = self._timings
        if isinstance(timings, dict):
            answer["timings"] = timings
            cached = timings.get("cache_n")
            if isinstance(cached, int) and len(self._choices) == 1:
                answer["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
        return orjson.dumps(answer)


def _index(choice: dict[str, Any]) -> int:
    index = choice.get("index")
    return index if isinstance(index, int) else 0


def _merge(into: dict[str, Any], choice: dict[str, Any]) -> None:
    if choice.get("finish_reason"):
        into["finish_reason"] = choice["finish_reason"]
    if isinstance(choice.get("text"), str):
        into["text"] = into.get("text", "") + choice["text"]
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        into.setdefault("logprobs", {"content": []})["content"] += logprobs["content"]
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return
    message = into.setdefault("message", {"role": "assistant", "content": None})
    for field in ("content", "reasoning_content"):
        if isinstance(delta.get(field), str):
            message[field] = (message.get(field) or "") + delta[field]
    for call in delta.get("tool_calls") or []:
        calls = message.setdefault("tool_calls", [])
        index = _index(call)
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        slot = calls[index]
        slot["id"] = call.get("id") or slot["id"]
        function = call.get("function") or {}
        slot["function"]["name"] += function.get("name") or ""
        slot["function"]["arguments"] += function.get("arguments") or ""


def _choice(index: int, merged: dict[str, Any], chat: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": merged.get("finish_reason")}
    if chat:
        choice["message"] = merged.get("message") or {"role": "assistant", "content": ""}
    else:
        choice["text"] = merged.get("text", "")
    choice["logprobs"] = merged.get("logprobs")
    return choice
