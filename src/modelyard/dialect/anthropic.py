"""Anthropic's Messages API (``/v1/messages``) over the OpenAI chat path.

Requests: ``system`` (text or blocks), messages of text, image, ``tool_use`` and
``tool_result`` blocks, ``tools`` with ``input_schema``, ``tool_choice`` (auto, any, tool,
none), ``stop_sequences``, ``max_tokens`` (required, as Anthropic's API has it). Answers: a
``message`` with content blocks and ``stop_reason``, or a stream of Anthropic's events
(``message_start``, ``content_block_start/delta/stop``, ``message_delta``, ``message_stop``).
"""

from __future__ import annotations

import json
from typing import Any

from modelyard.dialect.base import Dialect
from modelyard.errors import InvalidRequestError, ModelyardError, UnsupportedFeatureError

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}
_SAMPLING = ("temperature", "top_p", "top_k", "stream")


def anthropic_envelope(exc: ModelyardError) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ERROR_TYPES.get(
        exc.status, "invalid_request_error" if exc.status < 500 else "api_error"
    )
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def _text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    """The text of a ``system`` or ``tool_result`` content (a string or text blocks)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for block in content:
        if block.get("type") != "text":
            raise UnsupportedFeatureError(
                f"{where} may hold text blocks only, not {block.get('type')!r}", param=where
            )
        texts.append(str(block.get("text", "")))
    return "\n\n".join(texts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise InvalidRequestError(
            f"{where}.source must be base64 or url, not {source.get('type')!r}", param=where
        )
    return {"type": "image_url", "image_url": {"url": url}}


def chat_messages(system: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages for a Messages request: tool results become ``tool`` messages,
    tool uses the assistant's ``tool_calls``."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": _text(system, "system")})
    for i, message in enumerate(messages):
        role = message["role"]
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        thinking = []
        for n, block in enumerate(content):
            where = f"messages[{i}].content[{n}]"
            kind = block.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "image":
                parts.append(_image(block, where))
            elif kind == "tool_use" and role == "assistant":
                calls.append(
                    {
                        "id": str(block.get("id", f"toolu_{i}_{n}")),
                        "type": "function",
                        "function": {
                            "name": str(block.get("name", "")),
                            "arguments": json.dumps(block.get("input") or {}),
                        },
                    }
                )
            elif kind == "tool_result" and role == "user":
                text = _text(block.get("content"), f"{where}.content")
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": str(block.get("tool_use_id", "")),
                        "content": text,
                    }
                )
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                thinking.append(str(block.get("thinking", "")))
            else:
                raise UnsupportedFeatureError(
                    f"{where}: a {role} message cannot hold a {kind!r} block here", param=where
                )
        if not parts and not calls:
            continue  # only tool results: already added
        item: dict[str, Any] = {"role": role}
        if all(p["type"] == "text" for p in parts):
            item["content"] = "\n\n".join(p["text"] for p in parts)
        else:
            item["content"] = parts
        if calls:
            item["tool_calls"] = calls
        if thinking:
            item["reasoning_content"] = "\n\n".join(thinking)
        out.append(item)
    return out


def chat_payload(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat request for a validated Messages request ``body``."""
    payload: dict[str, Any] = {
        "model": body["model"],
        "messages": chat_messages(body.get("system"), body["messages"]),
        "max_tokens": body["max_tokens"],
    }
    for key in _SAMPLING:
        if body.get(key) is not None:
            payload[key] = body[key]
    if body.get("stop_sequences"):
        payload["stop"] = body["stop_sequences"]
    tools = body.get("tools") or []
    if tools:
        payload["tools"] = []
        for n, tool in enumerate(tools):
            if "input_schema" not in tool:
                raise UnsupportedFeatureError(
                    f"tools[{n}] ({tool.get('type') or tool.get('name')!r}) is a server tool; "
                    "only client tools (name, description, input_schema) can be called here",
                    param=f"tools[{n}]",
                )
            function = {"name": tool["name"], "parameters": tool["input_schema"]}
            if tool.get("description"):
                function["description"] = tool["description"]
            payload["tools"].append({"type": "function", "function": function})
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "auto":
            payload["tool_choice"] = "auto"
        elif kind == "any":
            payload["tool_choice"] = "required"
        elif kind == "none":
            payload["tool_choice"] = "none"
        elif kind == "tool":
            payload["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("disable_parallel_tool_use"):
            payload["parallel_tool_calls"] = False
    return payload


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(data).encode() + b"\n\n"


class AnthropicDialect(Dialect):
    def __init__(self, model: str, message_id: str) -> None:
        super().__init__(model)
        self._id = message_id
        self._started = False
        self._block = -1
        """Index of the content block being streamed; -1 before the first."""
        self._open: str | None = None
        """Its type while it is open: ``text``, ``thinking`` or ``tool_use``."""
        self._tools: dict[int, int] = {}
        """OpenAI tool-call index → its ``tool_use`` block."""

    def _message(self, content: list[dict[str, Any]], stop: str | None) -> dict[str, Any]:
        return {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": _usage(self.usage),
        }

    def answer(self, body: bytes) -> bytes:
        message = self.whole(body)
        content: list[dict[str, Any]] = []
        if message.get("reasoning_content"):
            content.append(
                {"type": "thinking", "thinking": message["reasoning_content"], "signature": ""}
            )
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except ValueError:
                arguments = {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{len(content)}",
                    "name": function.get("name", ""),
                    "input": arguments,
                }
            )
        stop = _STOP_REASONS.get(self.finish or "stop", "end_turn")
        return json.dumps(self._message(content, stop)).encode()

    def _begin(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return _event(
            "message_start", {"type": "message_start", "message": self._message([], None)}
        )

    def _switch(self, kind: str, block: dict[str, Any]) -> bytes:
        """Closes the open block and opens a new one of ``kind``."""
        out = self._end_block()
        self._block += 1
        self._open = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return out + _event("content_block_start", start)

    def _end_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        block = self._block if index is None else index
        data = {"type": "content_block_delta", "index": block, "delta": delta}
        return _event("content_block_delta", data)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = [self._begin()]
        delta = self.delta(chunk)
        if delta is not None:
            if delta.get("reasoning_content"):
                if self._open != "thinking":
                    out.append(self._switch("thinking", {"type": "thinking", "thinking": ""}))
                out.append(
                    self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]})
                )
            if delta.get("content"):
                if self._open != "text":
                    out.append(self._switch("text", {"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", 0))
                function = call.get("function") or {}
                if index not in self._tools:
                    block: dict[str, Any] = {
                        "type": "tool_use",
                        "id": call.get("id") or f"toolu_{index}",
                        "name": function.get("name") or "",
                        "input": {},
                    }
                    out.append(self._switch("tool_use", block))
                    self._tools[index] = self._block
                if function.get("arguments"):
                    out.append(
                        self._delta(
                            {"type": "input_json_delta", "partial_json": function["arguments"]},
                            self._tools[index],
                        )
                    )
        return b"".join(out)

    def close(self) -> bytes:
        stop = _STOP_REASONS.get(self.finish or "stop", "end_turn")
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": _usage(self.usage),
        }
        return b"".join(
            [
                self._begin(),
                self._end_block(),
                _event("message_delta", delta),
                _event("message_stop", {"type": "message_stop"}),
            ]
        )

    def envelope(self, exc: ModelyardError) -> dict[str, Any]:
        return anthropic_envelope(exc)

    def stream_error(self, exc: ModelyardError) -> bytes:
        return _event("error", anthropic_envelope(exc))
