"""How many tokens an engine read and generated for one request, from what it sent back.

A whole answer says it in its ``usage``. A stream says it in its last chunks, which a stream
stopped early never gets to; so the llama.cpp engine is asked for ``timings_per_token``,
and every chunk then carries its answer's running count (``timings.predicted_n``) and the
prompt it read (``prompt_n`` + ``cache_n``). llama.cpp also reports the usage of one answer
only when it writes several (``n``, a list of prompts): the per-answer counts are summed.

Which figure counts, best first: the engine's final ``usage`` for a single answer; the
per-answer running counts; the final ``usage`` of an engine that gives no running counts;
and, as a last resort (an engine that reports nothing before its end, stopped early), one
token per stream event and the request's prompt bound.
"""

from __future__ import annotations

from typing import Any

import orjson

HELD = 1 << 20
"""The most of an unfinished event kept (an engine's event is a few hundred bytes)."""


class Tally:
    __slots__ = ("_answers", "_held", "_last", "_prompt_bound", "_usage", "events", "prompts")

    def __init__(self, prompts: int = 1, prompt_bound: int = 0) -> None:
        self.prompts = prompts
        """Prompts of the request: each is read once however many answers it gets (``n``)."""
        self._prompt_bound = prompt_bound
        self.reset()

    def reset(self) -> None:
        """Forgets what was counted (also: the request is asked again)."""
        self.events = 0
        """Stream events seen."""
        self._answers: dict[int, tuple[int, int]] = {}
        """Answer index → (prompt tokens, tokens generated so far)."""
        self._usage: tuple[int, int] | None = None
        self._last = 0
        """The answer the latest chunk was of."""
        self._held = b""

    def feed(self, chunk: bytes) -> None:
        """Some bytes of an SSE stream, cut anywhere."""
        self.events += chunk.count(b"data: ")
        data = self._held + chunk if self._held else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._held = data[-HELD:]
            return
        self._held = data[end + 2 :]
        complete = data[:end]
        if b'"timings"' not in complete and b'"usage"' not in complete:
            return
        for event in complete.split(b"\n\n"):
            if event.startswith(b"data: ") and (b'"timings"' in event or b'"usage"' in event):
                try:
                    value = orjson.loads(event[6:])
                except ValueError:
                    continue
                if isinstance(value, dict):
                    self._note(value)

    def note(self, chunk: dict[str, Any]) -> None:
        """One stream chunk, parsed (by a reader that parses every chunk anyway)."""
        self.events += 1
        self._note(chunk)

    def _note(self, chunk: dict[str, Any]) -> None:
        # Once a token (llama.cpp's chunks all carry ``timings`` when asked): ``_int`` inlined.
        usage = chunk.get("usage")
        if type(usage) is dict:
            self._usage = (_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
        choices = chunk.get("choices")
        if type(choices) is list and choices and type(choices[0]) is dict:
            index = choices[0].get("index")
            self._last = index if type(index) is int else 0
        elif type(usage) is not dict:
            return
        # A usage chunk (no choices) follows the end of its answer, with its final count: a
        # token that made no text (half a character) had no chunk of its own.
        timings = chunk.get("timings")
        if type(timings) is dict:
            prompt = timings.get("prompt_n")
            cached = timings.get("cache_n")
            generated = timings.get("predicted_n")
            prompt = (prompt if type(prompt) is int else 0) + (cached if type(cached) is int else 0)
            if type(generated) is not int:
                generated = 0
            before = self._answers.get(self._last)
            most = before[1] if before is not None else 0
            self._answers[self._last] = (prompt, generated if generated > most else most)

    def read(self, body: bytes) -> None:
        """A whole answer."""
        try:
            value = orjson.loads(body)
        except ValueError:
            return
        if isinstance(value, dict):
            self._note({"usage": value.get("usage")})

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens, by the best figure there is (see the module)."""
        answers = self._answers
        if self._usage is not None and len(answers) <= 1:
            return self._usage
        if answers:
            # Each answer tells its prompt's size: their mean, once per prompt (a stream
            # stopped early may not have heard from every answer yet).
            prompt = sum(p for p, _ in answers.values()) / len(answers) * self.prompts
            return round(prompt), sum(g for _, g in answers.values())
        if self._usage is not None:
            return self._usage
        if self.events:
            return self._prompt_bound, self.events
        return 0, 0


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
