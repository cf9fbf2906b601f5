"""OpenAI's Responses API (``POST /v1/responses``), the stateless part, over the chat path.

Requests: ``input`` as text or items (messages with ``input_text``/``input_image`` parts,
``function_call`` and ``function_call_output`` items), ``instructions``, function ``tools``,
``tool_choice``, ``max_output_tokens``, ``text.format`` (JSON schema or object). Nothing is
stored: ``previous_response_id`` is refused, so a conversation goes back whole in ``input``.
Answers: a ``response`` with ``message`` and ``function_call`` output items, or its stream
of typed events (``response.created`` … ``response.output_text.delta`` …
``response.completed``), each with its ``sequence_number``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from modelyard.dialect.base import Dialect
from modelyard.errors import InvalidRequestError, ModelyardError, UnsupportedFeatureError


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content as chat content: text, or text and image parts."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for n, part in enumerate(content or []):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise UnsupportedFeatureError(
                f"{where}[{n}]: {kind!r} parts are not supported (text and images by URL are)",
                param=f"{where}[{n}]",
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def chat_messages(instructions: str | None, items: str | list[Any]) -> list[dict[str, Any]]:
    """Chat messages for ``instructions`` and ``input``: consecutive function calls become
    one assistant message's ``tool_calls``, their outputs ``tool`` messages."""
    out: list[dict[str, Any]] = []
    if instructions:
        out.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequestError(f"{where}.role {role!r} is not a role", param=where)
            out.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            text = output if isinstance(output, str) else json.dumps(output)
            out.append(
                {"role": "tool", "tool_call_id": str(item.get("call_id", "")), "content": text}
            )
        elif kind == "reasoning":
            continue  # an earlier answer's reasoning: the model does not read it back
        else:
            raise UnsupportedFeatureError(
                f"{where}: {kind!r} items are not supported", param=f"{where}.type"
            )
    return out


def chat_payload(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request for a validated Responses request ``body``."""
    if body.get("previous_response_id"):
        raise UnsupportedFeatureError(
            "previous_response_id is not supported: modelyard stores no responses. Send the "
            "whole conversation in input (earlier output items included)",
            param="previous_response_id",
        )
    payload: dict[str, Any] = {
        "model": body["model"],
        "messages": chat_messages(body.get("instructions"), body["input"]),
        "stream": bool(body.get("stream")),
    }
    for ours, theirs in (
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("keep_alive", "keep_alive"),
    ):
        if body.get(ours) is not None:
            payload[theirs] = body[ours]
    tools = []
    for n, tool in enumerate(body.get("tools") or []):
        if tool.get("type") != "function":
            raise UnsupportedFeatureError(
                f"tools[{n}]: {tool.get('type')!r} tools are not supported (function tools are)",
                param=f"tools[{n}]",
            )
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        tools.append({"type": "function", "function": function})
    if tools:
        payload["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        payload["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        payload["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
        payload["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt.get("type") == "json_object":
        payload["response_format"] = {"type": "json_object"}
    return payload


class ResponsesDialect(Dialect):
    def __init__(self, model: str, response_id: str, request: dict[str, Any]) -> None:
        super().__init__(model)
        self._id = response_id
        self._request = request
        self._created = int(time.time())
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        """Items so far; the open one (text or a call still streaming) is the last."""
        self._calls: dict[int, int] = {}
        """Chat tool-call index → its output item's index."""
        self._open: int | None = None
        self._started = False

    def _response(self, status: str) -> dict[str, Any]:
        request = self._request
        incomplete = None
        if status == "completed" and self.finish == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        prompt = int(self.usage.get("prompt_tokens") or 0)
        completion = int(self.usage.get("completion_tokens") or 0)
        cached = (self.usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "metadata": request.get("metadata") or {},
            "model": self.model,
            "output": self._output,
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "temperature": request.get("temperature"),
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [],
            "top_p": request.get("top_p"),
            "text": request.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled",
            "store": False,
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": int(cached)},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            },
        }

    def _message(self, text: str, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {
            "type": "message",
            "id": f"msg_{self._id[5:]}_{len(self._output)}",
            "status": status,
            "role": "assistant",
            "content": [part] if status == "completed" else [],
        }

    def _call(self, call: dict[str, Any], status: str) -> dict[str, Any]:
        function = call.get("function") or {}
        return {
            "type": "function_call",
            "id": f"fc_{self._id[5:]}_{len(self._output)}",
            "call_id": call.get("id") or f"call_{len(self._output)}",
            "name": function.get("name") or "",
            "arguments": function.get("arguments") or "",
            "status": status,
        }

    def answer(self, body: bytes) -> bytes:
        message = self.whole(body)
        if message.get("content"):
            self._output.append(self._message(message["content"], "completed"))
        for call in message.get("tool_calls") or []:
            self._output.append(self._call(call, "completed"))
        return json.dumps(self._response("completed")).encode()

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(data).encode() + b"\n\n"

    def _begin(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = self._response("in_progress")
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    def _close_item(self) -> bytes:
        """Ends the open output item: its text or arguments are complete."""
        if self._open is None:
            return b""
        index, self._open = self._open, None
        item = self._output[index]
        out = []
        if item["type"] == "message":
            text = item.pop("text", "")
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out.append(
                self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
            )
            out.append(self._event("response.content_part.done", {**where, "part": part}))
            item["content"] = [part]
        else:
            where = {"item_id": item["id"], "output_index": index}
            done = {**where, "name": item["name"], "arguments": item["arguments"]}
            out.append(self._event("response.function_call_arguments.done", done))
        item["status"] = "completed"
        out.append(self._event("response.output_item.done", {"output_index": index, "item": item}))
        return b"".join(out)

    def _open_item(self, item: dict[str, Any]) -> bytes:
        out = [self._close_item()]
        self._output.append(item)
        index = self._open = len(self._output) - 1
        out.append(self._event("response.output_item.added", {"output_index": index, "item": item}))
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out.append(self._event("response.content_part.added", {**where, "part": part}))
        return b"".join(out)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = [self._begin()]
        delta = self.delta(chunk)
        if delta is not None:
            text = delta.get("content")
            if text:
                open_item = self._output[self._open] if self._open is not None else None
                if open_item is None or open_item["type"] != "message":
                    out.append(self._open_item(self._message("", "in_progress")))
                index = self._open
                assert index is not None
                item = self._output[index]
                item["text"] = item.get("text", "") + text
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                out.append(
                    self._event(
                        "response.output_text.delta", {**where, "delta": text, "logprobs": []}
                    )
                )
            for call in delta.get("tool_calls") or []:
                position = int(call.get("index", 0))
                if position not in self._calls:
                    name = (call.get("function") or {}).get("name")
                    started = {**call, "function": {"name": name}}  # arguments: as they come
                    out.append(self._open_item(self._call(started, "in_progress")))
                    assert self._open is not None
                    self._calls[position] = self._open
                index = self._calls[position]
                piece = (call.get("function") or {}).get("arguments") or ""
                if piece:
                    item = self._output[index]
                    item["arguments"] += piece
                    where = {"item_id": item["id"], "output_index": index}
                    out.append(
                        self._event(
                            "response.function_call_arguments.delta", {**where, "delta": piece}
                        )
                    )
        return b"".join(out)

    def close(self) -> bytes:
        out = [self._begin(), self._close_item()]
        response = self._response("completed")
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": response}))
        return b"".join(out)

    def stream_error(self, exc: ModelyardError) -> bytes:
        error = {"code": exc.code or exc.type, "message": exc.message, "param": exc.param}
        response = {
            **self._response("failed"),
            "error": {"code": error["code"], "message": exc.message},
        }
        return (
            self._begin()
            + self._event("error", error)
            + self._event("response.failed", {"response": response})
        )
