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
        self._choices: dict[int, _Choice] = {}
        self._timings: object = None
        """llama.cpp's figures, of the latest chunk that had them."""

    def feed(self, data: bytes) -> None:
        """Some bytes of the stream, cut anywhere; an error event is the engine's failure."""
        events, held = sse_events(self._held + data if self._held else data)
        self._held = held[-HELD:]
        note = self._tally.note
        merged = self._choices
        for chunk in stream_chunks(events):  # a chunk a token: what each does is inlined
            note(chunk)
            if "error" in chunk:
                failure = engine_error(chunk)
                if failure is not None:
                    raise RunnerError(f"model server failed: {failure}")
            if not self._head:
                self._head = chunk
            if "timings" in chunk:
                self._timings = chunk["timings"]
            for choice in chunk.get("choices") or ():
                if type(choice) is dict:
                    index = _index(choice)
                    into = merged.get(index)
                    if into is None:
                        into = merged[index] = _Choice()
                    into.merge(choice)

    @property
    def timings(self) -> object:
        """llama.cpp's figures, of the latest chunk that had them."""
        return self._timings

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
            "choices": [self._choices[i].as_dict(i, chat) for i in sorted(self._choices)],
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


class _Choice:
    """One choice's pieces as they come, joined once at the end (a long answer's text
    is never copied again at every token)."""

    __slots__ = ("calls", "content", "finish_reason", "logprobs", "message", "reasoning", "text")

    def __init__(self) -> None:
        self.finish_reason: object = None
        self.text: list[str] | None = None
        self.logprobs: list[Any] | None = None
        self.message = False
        """A delta came: the answer is a chat message."""
        self.content: list[str] | None = None
        self.reasoning: list[str] | None = None
        self.calls: list[list[Any]] = []
        """Per tool call: its id, and the pieces of its name and of its arguments."""

    def merge(self, choice: dict[str, Any]) -> None:
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish
        text = choice.get("text")
        if isinstance(text, str):
            if self.text is None:
                self.text = []
            self.text.append(text)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(logprobs["content"])
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        self.message = True
        content = delta.get("content")
        if isinstance(content, str):
            if self.content is None:
                self.content = []
            self.content.append(content)
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str):
            if self.reasoning is None:
                self.reasoning = []
            self.reasoning.append(reasoning)
        for call in delta.get("tool_calls") or []:
            index = _index(call)
            while len(self.calls) <= index:
                self.calls.append(["", [], []])
            slot = self.calls[index]
            slot[0] = call.get("id") or slot[0]
            function = call.get("function") or {}
            slot[1].append(function.get("name") or "")
            slot[2].append(function.get("arguments") or "")

    def as_dict(self, index: int, chat: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": self.finish_reason}
        if chat:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(self.content) if self.content is not None else None,
            }
            if not self.message:
                message["content"] = ""
            if self.reasoning is not None:
                message["reasoning_content"] = "".join(self.reasoning)
            if self.calls:
                message["tool_calls"] = [
                    {
                        "id": id_,
                        "type": "function",
                        "function": {"name": "".join(name), "arguments": "".join(arguments)},
                    }
                    for id_, name, arguments in self.calls
                ]
            choice["message"] = message
        else:
            choice["text"] = "".join(self.text) if self.text is not None else ""
        choice["logprobs"] = {"content": self.logprobs} if self.logprobs is not None else None
        return choice
