"""A forced tool call that is a call: ``tool_choice`` ``required`` or a named tool (and what
Anthropic's ``any``/``tool`` and the Responses API's choices become) on llama.cpp.

llama.cpp's tool grammar lets a model write text before its call, so a small model held to
a call could write text only until ``max_tokens``. Instead the engine is held to the call
itself: a JSON schema (``json_schema``, which llama.cpp takes beside ``tools``, so the chat
template still shows them) admits exactly ``{"name": one of the tools, "arguments": that
tool's parameters}``, and ``ForcedCall`` turns the JSON the model wrote into the call, in
whatever API the client speaks (it wraps that API's dialect). One call per answer: a
forced choice is met by one.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from modelyard.dialect.base import Dialect, parse_answer
from modelyard.errors import ModelyardError


def forced(payload: dict[str, Any]) -> bool:
    """Whether ``payload`` (an OpenAI chat request) forces a tool call."""
    return payload.get("tool_choice") == "required" and bool(payload.get("tools"))


def hold_to_call(payload: dict[str, Any]) -> bool:
    """Adds the schema that admits exactly one call of one of ``payload``'s tools; ``False``
    when none of them is a function with a name (llama.cpp then says what is wrong)."""
    calls = []
    for tool in payload["tools"]:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        parameters = function.get("parameters") or {"type": "object"}
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
            }
        )
    if not calls:
        return False
    payload["json_schema"] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return True


class ForcedCall(Dialect):
    """Answers whose content is a held call, as the call, in ``inner``'s API."""

    def __init__(self, inner: Dialect, usage: bool) -> None:
        super().__init__(inner.model)
        self.inner = inner
        self.media_type = inner.media_type
        self._plain = type(inner) is Dialect
        """``inner`` speaks OpenAI's own API."""
        self._usage = usage
        """Whether the client asked for the usage chunk (OpenAI's API; others have theirs)."""
        self._held = _Held()
        self._head: dict[str, Any] = {}

    def answer(self, body: bytes) -> bytes:
        self.inner.load_wait = self.load_wait
        data = parse_answer(body)
        for choice in data["choices"]:
            message = choice.get("message") or {}
            content = message.get("content")
            held = _Held()
            name, arguments = held.add(content) if isinstance(content, str) else (None, "")
            if name is not None and held.whole:
                call = _call(name)
                call["function"]["arguments"] = arguments
                choice["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
                choice["finish_reason"] = "tool_calls"
        return self.inner.answer(json.dumps(data).encode())

    def feed(self, chunk: dict[str, Any]) -> bytes:
        self.inner.load_wait = self.load_wait
        choices = chunk.get("choices") or []
        if not choices:
            if "usage" in chunk and self._plain and not self._usage:
                return b""  # asked for by the gateway, not the client
            return self.inner.feed(chunk)
        choice = choices[0]
        delta = choice.get("delta") or {}
        if not self._head:
            self._head = {k: v for k, v in chunk.items() if k not in ("choices", "timings")}
        out = b""
        text = delta.get("content")
        if isinstance(text, str) and text:
            # The call's name as soon as it is written, then its arguments piece by piece.
            name, arguments = self._held.add(text)
            if name is not None:
                call = {"index": 0, **_call(name)}
                out += self.inner.feed(self._chunk({"tool_calls": [call]}, None))
            if arguments:
                piece = {"index": 0, "function": {"arguments": arguments}}
                out += self.inner.feed(self._chunk({"tool_calls": [piece]}, None))
        finish = choice.get("finish_reason")
        if not finish:
            if not isinstance(text, str):
                out += self.inner.feed(chunk)  # the role, or something else: as it is
            return out
        held = self._held
        if not held.named:  # cut short before the call's name: what it wrote
            written = {"content": held.text} if held.text else {}
            return out + self.inner.feed(self._chunk(written, finish, chunk))
        # A held call ends where its arguments end; cut short (max_tokens), it says so.
        reason = "tool_calls" if held.whole else finish
        return out + self.inner.feed(self._chunk({}, reason, chunk))

    def _chunk(
        self, delta: dict[str, Any], finish: str | None, like: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        chunk = {**self._head, **(like or {})}
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return chunk

    def close(self) -> bytes:
        self.inner.load_wait = self.load_wait
        return self.inner.close()

    def envelope(self, exc: ModelyardError) -> dict[str, Any]:
        return self.inner.envelope(exc)

    def stream_error(self, exc: ModelyardError) -> bytes:
        return self.inner.stream_error(exc)


_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:')
"""The start of a held call, up to its arguments (the schema writes ``name`` first)."""


class _Held:
    """Reads a held call's text as it comes: its name once written, then its arguments'
    text exactly as the model wrote it (the whitespace before them and the call's own
    closing brace after them are the held shape, not the arguments)."""

    def __init__(self) -> None:
        self.text = ""
        self.named = False
        self._at: int | None = None
        """Where in ``text`` the next character of the arguments is."""
        self._depth = 0
        self._started = False
        self._quoted = False
        self._escaped = False

    @property
    def whole(self) -> bool:
        """Whether the arguments have ended."""
        return self._started and self._depth == 0

    def add(self, text: str) -> tuple[str | None, str]:
        """The name if this text completed it, and the arguments' text this adds."""
        self.text += text
        name = None
        if self._at is None:
            head = _HEAD.match(self.text)
            if head is None:
                return None, ""
            self._at = head.end()
            self.named = True
            name = json.loads(f'"{head.group(1)}"')
        piece = []
        for char in self.text[self._at :]:
            self._at += 1
            if self.whole or (not self._started and char.isspace()):
                continue
            piece.append(char)
            if self._quoted:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._quoted = False
            elif char == '"':
                self._quoted = True
            elif char in "{[":
                self._depth += 1
                self._started = True
            elif char in "}]":
                self._depth -= 1
        return name, "".join(piece)


def _call(name: str) -> dict[str, Any]:
    return {
        "id": "call_" + secrets.token_hex(12),
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
