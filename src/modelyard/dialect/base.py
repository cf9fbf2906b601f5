"""The seam between the OpenAI chat path and the other APIs spoken over it.

A translated route (Ollama's ``/api/chat``, Anthropic's ``/v1/messages``, OpenAI's
``/v1/responses``) turns its request into an OpenAI chat payload and serves it through the
same ``Dispatch`` as ``/v1/chat/completions``: same queue, lease, limits and ledger. The
answer comes back through a ``Dialect``, one per request: the whole answer at once
(``answer``), or a stream event by event (``feed``, then ``close``), and errors in the shape
its clients read (``envelope``, ``stream_error``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import orjson

from modelyard.errors import ModelyardError, RunnerError

SSE = b"text/event-stream; charset=utf-8"
NDJSON = b"application/x-ndjson"


class Dialect:
    """Speaks OpenAI's chat answers in another API's shape (the base speaks OpenAI's)."""

    media_type: bytes = SSE
    """Of a streamed answer."""

    def __init__(self, model: str) -> None:
        self.model = model
        """The name the client asked for, as its answers should carry it."""
        self.started = time.perf_counter()
        self.load_wait = 0.0
        """Seconds the request waited for its model to load (set by ``Dispatch``)."""
        self.finish: str | None = None
        """The engine's ``finish_reason`` (``stop``, ``length``, ``tool_calls``)."""
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] = {}
        """llama.cpp's: ``prompt_n``, ``prompt_ms``, ``predicted_n``, ``predicted_ms``."""

    def whole(self, body: bytes) -> dict[str, Any]:
        """A whole answer's first message (a completion's text as its ``content``), with its
        finish reason, usage and timings noted."""
        data = parse_answer(body)
        choice = data["choices"][0] if data["choices"] else {}
        self.finish = choice.get("finish_reason")
        self.usage = data.get("usage") or {}
        self.timings = data.get("timings") or {}
        message: dict[str, Any] = choice.get("message") or {"content": choice.get("text")}
        return message

    def delta(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """A stream chunk's first delta (a completion's text as its ``content``), with the
        finish reason, usage and timings it carries noted; ``None`` for a chunk without one
        (the usage-only chunk)."""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        choices = chunk.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        delta: dict[str, Any] = choice.get("delta") or {"content": choice.get("text")}
        return delta

    def answer(self, body: bytes) -> bytes:
        """A whole OpenAI chat answer in this dialect."""
        return body

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """One OpenAI stream chunk (a ``chat.completion.chunk``, or the usage-only one)."""
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def close(self) -> bytes:
        """What ends a stream that the engine ended."""
        return b"data: [DONE]\n\n"

    def envelope(self, exc: ModelyardError) -> dict[str, Any]:
        """The body of an error response."""
        return exc.envelope()

    def stream_error(self, exc: ModelyardError) -> bytes:
        """What a stream that already started sends when it fails."""
        return b"data: " + json.dumps(self.envelope(exc)).encode() + b"\n\ndata: [DONE]\n\n"


def parse_answer(body: bytes) -> dict[str, Any]:
    """An engine's whole chat answer; a malformed one is the engine's failure."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise RunnerError(f"model server sent a malformed answer: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise RunnerError("model server sent an answer without choices")
    return data


def sse_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The ``data:`` payloads of the complete events in ``buffer``, and what is left of an
    event still to come."""
    end = buffer.rfind(b"\n\n")
    if end < 0:
        return [], buffer
    events = [
        event[6:] if event.startswith(b"data: ") else event[5:]
        for event in buffer[:end].split(b"\n\n")
        if event.startswith(b"data:")
    ]
    return events, buffer[end + 2 :]


def stream_chunks(events: list[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects among SSE ``events`` (``[DONE]`` and anything unreadable left out:
    nothing a client of another API could read)."""
    for event in events:
        if event == b"[DONE]":
            continue
        try:
            chunk = orjson.loads(event)
        except ValueError:
            continue
        if isinstance(chunk, dict):
            yield chunk


def engine_error(chunk: dict[str, Any]) -> str | None:
    """The message of an error event an engine sent instead of its next chunk."""
    if "error" not in chunk:
        return None
    error = chunk["error"]
    return str(error.get("message") if isinstance(error, dict) else error)
