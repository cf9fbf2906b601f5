"""A whole answer made from an engine's stream.

llama.cpp's whole answer with several choices (``n``, or a list of prompts) reports the
usage of one of them; streamed, each chunk says how far its own choice has got. So when a
client asks such a request without streaming, the gateway asks the engine for a stream and
gathers it here into the answer the client asked for, with the usage of every choice.
"""

from __future__ import annotations

import json
from typing import Any

from modelyard.api.tally import Tally
from modelyard.dialect.base import engine_error, sse_events, stream_chunks
from modelyard.errors import RunnerError

_OBJECTS = {"chat.completion.chunk": "chat.completion", "text_completion": "text_completion"}


def gather(stream: bytes, prompts: int) -> bytes:
    """The whole answer of an OpenAI chat or completion ``stream`` (SSE bytes) of a request
    with ``prompts`` prompts."""
    whole = stream if stream.endswith(b"\n\n") else stream + b"\n\n"
    events, _ = sse_events(whole)
    tally = Tally(prompts)
    tally.feed(whole)
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in stream_chunks(events):
        failure = engine_error(chunk)
        if failure is not None:
            raise RunnerError(f"model server failed: {failure}")
        if not head:
            head = chunk
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict):
                _merge(choices.setdefault(int(choice.get("index") or 0), {}), choice)
    if not head:
        raise RunnerError("model server sent an empty stream")
    prompt, completion = tally.tokens()
    chat = head.get("object") == "chat.completion.chunk"
    answer = {
        "id": head.get("id"),
        "object": _OBJECTS.get(str(head.get("object")), head.get("object")),
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": [_choice(i, choices[i], chat) for i in sorted(choices)],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return json.dumps(answer).encode()


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
        index = int(call.get("index") or 0)
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
