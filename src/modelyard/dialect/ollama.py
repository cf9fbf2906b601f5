"""Ollama's ``/api/chat`` and ``/api/generate`` over the OpenAI chat path.

Requests: messages (with ``images`` and ``tool_calls``), ``format`` (``"json"`` or a JSON
schema), ``options`` (Ollama's sampling names, mapped to llama.cpp's), ``tools`` and
``think``. Answers: one JSON object, or NDJSON lines with ``done: false`` and a last one with
``done: true``, ``done_reason`` and Ollama's counters (durations in nanoseconds). Tool calls
come whole, with their arguments as an object, in the line before the last.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import time
from datetime import UTC
from typing import Any

from modelyard.dialect.base import NDJSON, Dialect
from modelyard.errors import InvalidRequestError, ModelyardError

log = logging.getLogger(__name__)

# Ollama's option → llama.cpp's request field (the same name where both agree).
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "num_keep": "n_keep",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
}
RUNTIME_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
        "vocab_only",
        "f16_kv",
        "logits_all",
        "embedding_only",
        "num_gqa",
        "penalize_newline",
        "tfs_z",
    }
)
"""Options Ollama applies when it loads a model: a modelyard catalog entry sets them (``ctx``,
``gpu_layers``, ``threads``), so a request's are taken and not applied."""
_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}
_IMAGE_TYPES = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)


def now_iso() -> str:
    """Ollama's ``created_at``: UTC with microseconds and a ``Z``."""
    return datetime.datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def sampling(options: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI/llama.cpp request fields for Ollama's ``options``."""
    fields: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key == "num_predict":
            # -1: until the model stops; -2: until the context is full. Both: no limit here.
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRequestError("options.num_predict must be an integer", param=key)
            if value >= 0:
                fields["max_tokens"] = value
        elif key in _OPTIONS:
            fields[_OPTIONS[key]] = value
        elif key not in RUNTIME_OPTIONS:
            # Ollama warns and goes on: clients send options of other versions.
            log.info("ignoring the unknown Ollama option %r", key)
    return fields


def response_format(value: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` for Ollama's ``format``."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise InvalidRequestError('format must be "json" or a JSON schema', param="format")


def image_part(data: str, index: int) -> dict[str, Any]:
    """An OpenAI ``image_url`` part for one of Ollama's base64 images."""
    if data.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": data}}
    try:
        head = base64.b64decode(data[:24] + "=" * (-len(data[:24]) % 4))
    except ValueError:
        raise InvalidRequestError(
            f"images[{index}] is not base64 image data", param=f"images[{index}]"
        ) from None
    mime = next((m for magic, m in _IMAGE_TYPES if head.startswith(magic)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages for Ollama's: images become parts, tool calls get ids (Ollama's
    have none) and tool results point at the call they answer."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, function name) of calls not yet answered
    for i, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content") or ""
        item: dict[str, Any] = {"role": role, "content": content}
        images = message.get("images") or []
        if images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            item["content"] = parts + [image_part(img, n) for n, img in enumerate(images)]
        calls = message.get("tool_calls") or []
        if calls:
            item["tool_calls"] = []
            for n, call in enumerate(calls):
                function = call.get("function") or {}
                call_id = call.get("id") or f"call_{i}_{n}"
                name = str(function.get("name", ""))
                arguments = function.get("arguments", {})
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments)
                item["tool_calls"].append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                )
                pending.append((call_id, name))
        if role == "tool":
            tool = message.get("tool_name") or message.get("name")
            match = next((p for p in pending if p[1] == tool), pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                item["tool_call_id"] = match[0]
            else:
                item["tool_call_id"] = message.get("tool_call_id") or f"call_{i}"
        if message.get("thinking") and role == "assistant":
            item["reasoning_content"] = message["thinking"]
        out.append(item)
    return out


def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's tool calls (arguments as an object) for OpenAI's (arguments as a string)."""
    result = []
    for call in calls:
        function = call.get("function") or {}
        raw = function.get("arguments") or ""
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            arguments = {}
        if not isinstance(arguments, dict):
            arguments = {"value": arguments}
        result.append({"function": {"name": function.get("name", ""), "arguments": arguments}})
    return result


class OllamaDialect(Dialect):
    """``/api/chat`` answers (``message``); ``generate``: ``/api/generate`` (``response``)."""

    media_type = NDJSON

    def __init__(self, model: str, *, generate: bool = False) -> None:
        super().__init__(model)
        self._generate = generate
        self._calls: dict[int, dict[str, Any]] = {}

    def _line(self, text: str, thinking: str | None, calls: list[dict[str, Any]]) -> dict[str, Any]:
        line: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self._generate:
            line["response"] = text
            if thinking:
                line["thinking"] = thinking
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            line["message"] = message
        line["done"] = False
        return line

    def _counters(self, line: dict[str, Any]) -> dict[str, Any]:
        line["done"] = True
        finish = self.finish or "stop"
        line["done_reason"] = _DONE_REASONS.get(finish, finish)
        prompt_ms = self.timings.get("prompt_ms")
        predicted_ms = self.timings.get("predicted_ms")
        line["total_duration"] = int((time.perf_counter() - self.started) * 1e9)
        line["load_duration"] = int(self.load_wait * 1e9)
        line["prompt_eval_count"] = int(
            self.usage.get("prompt_tokens") or self.timings.get("prompt_n") or 0
        )
        if isinstance(prompt_ms, int | float):
            line["prompt_eval_duration"] = int(prompt_ms * 1e6)
        line["eval_count"] = int(
            self.usage.get("completion_tokens") or self.timings.get("predicted_n") or 0
        )
        if isinstance(predicted_ms, int | float):
            line["eval_duration"] = int(predicted_ms * 1e6)
        return line

    def answer(self, body: bytes) -> bytes:
        message = self.whole(body)  # a completion's text too (``raw`` generation)
        line = self._line(
            message.get("content") or "",
            message.get("reasoning_content"),
            tool_calls(message.get("tool_calls") or []),
        )
        return json.dumps(self._counters(line)).encode()

    def feed(self, chunk: dict[str, Any]) -> bytes:
        delta = self.delta(chunk)
        if delta is None:
            return b""
        for call in delta.get("tool_calls") or []:
            slot = self._calls.setdefault(int(call.get("index", 0)), {"name": "", "arguments": ""})
            function = call.get("function") or {}
            slot["name"] += function.get("name") or ""
            slot["arguments"] += function.get("arguments") or ""
        text = delta.get("content") or ""
        thinking = delta.get("reasoning_content") or ""
        if not text and not thinking:
            return b""
        return json.dumps(self._line(text, thinking, [])).encode() + b"\n"

    def close(self) -> bytes:
        out = b""
        if self._calls:
            calls = tool_calls([{"function": self._calls[i]} for i in sorted(self._calls)])
            out = json.dumps(self._line("", None, calls)).encode() + b"\n"
        return out + json.dumps(self._counters(self._line("", None, []))).encode() + b"\n"

    def envelope(self, exc: ModelyardError) -> dict[str, Any]:
        return ollama_envelope(exc)

    def stream_error(self, exc: ModelyardError) -> bytes:
        return json.dumps(self.envelope(exc)).encode() + b"\n"


def ollama_envelope(exc: ModelyardError) -> dict[str, Any]:
    """Ollama's error body, ``{"error": "message"}``, with modelyard's ``code`` beside it
    (Ollama's clients read ``error``; modelyard's CLI and web page tell errors apart by code)."""
    return {"error": exc.message, "code": exc.code} if exc.code else {"error": exc.message}
