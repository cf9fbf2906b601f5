"""A forced tool call held to its shape: the schema, and the held JSON turned into the call,
streamed piece by piece or whole, in OpenAI's API and another's."""

from __future__ import annotations

import json
from typing import Any

from modelyard.dialect.anthropic import AnthropicDialect
from modelyard.dialect.base import Dialect
from modelyard.dialect.forced import ForcedCall, forced, hold_to_call

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
TIME = {"type": "function", "function": {"name": "get_time"}}
HELD = '{\n  "name": "get_weather",\n  "arguments": {"city": "Pa\\"ris {x}"}\n}'


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


def events(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]


def test_forced_holds_the_engine_to_one_call_of_an_offered_tool() -> None:
    payload: dict[str, Any] = {"tools": [WEATHER, TIME], "tool_choice": "required"}
    assert forced(payload)
    assert not forced({"tools": [WEATHER], "tool_choice": "auto"})
    assert hold_to_call(payload)
    names = [c["properties"]["name"]["const"] for c in payload["json_schema"]["anyOf"]]
    assert names == ["get_weather", "get_time"]
    assert payload["json_schema"]["anyOf"][1]["properties"]["arguments"] == {"type": "object"}
    nameless: dict[str, Any] = {"tools": [{"type": "function"}], "tool_choice": "required"}
    assert not hold_to_call(nameless)
    assert "json_schema" not in nameless


def test_forced_streams_the_call_as_it_is_written() -> None:
    dialect = ForcedCall(Dialect("m"), usage=False)
    out = dialect.feed({**chunk(), "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    for n in range(0, len(HELD), 3):  # the engine's text, in pieces
        out += dialect.feed(chunk(HELD[n : n + 3]))
    out += dialect.feed(chunk(finish="stop"))
    out += dialect.feed({"choices": [], "usage": {"prompt_tokens": 1}})  # not asked for
    sent = events(out)
    assert sent[0]["choices"][0]["delta"] == {"role": "assistant"}
    calls = [c for e in sent for c in e["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather"
    assert len(calls) > 3  # the arguments came in pieces
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"city": 'Pa"ris {x}'}  # not the call's closing brace
    assert sent[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all("content" not in e["choices"][0]["delta"] for e in sent)


def test_forced_cut_short_says_so() -> None:
    cut = ForcedCall(Dialect("m"), usage=True)
    out = cut.feed(chunk(HELD[:40])) + cut.feed(chunk(finish="length"))
    assert events(out)[-1]["choices"][0]["finish_reason"] == "length"
    early = ForcedCall(Dialect("m"), usage=True)
    out = early.feed(chunk('{"na')) + early.feed(chunk(finish="length"))
    assert events(out)[-1]["choices"][0]["delta"] == {"content": '{"na'}


def test_forced_whole_answer_in_another_api() -> None:
    dialect = ForcedCall(AnthropicDialect("m", "msg_1"), usage=False)
    answer = {"choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": HELD}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 9}}  # fmt: skip
    message = json.loads(dialect.answer(json.dumps(answer).encode()))
    assert message["stop_reason"] == "tool_use"
    (block,) = message["content"]
    assert block["type"] == "tool_use"
    assert block["input"] == {"city": 'Pa"ris {x}'}


def test_forced_whole_and_streamed_calls_have_the_same_arguments() -> None:
    streamed = ForcedCall(Dialect("m"), usage=False)
    out = b"".join(streamed.feed(chunk(HELD[n : n + 2])) for n in range(0, len(HELD), 2))
    calls = [c for e in events(out) for c in e["choices"][0]["delta"].get("tool_calls", [])]
    pieces = "".join(c["function"]["arguments"] for c in calls)
    answer = {"choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": HELD}}]}  # fmt: skip
    whole = json.loads(ForcedCall(Dialect("m"), usage=False).answer(json.dumps(answer).encode()))
    (call,) = whole["choices"][0]["message"]["tool_calls"]
    assert call["function"]["arguments"] == pieces == '{"city": "Pa\\"ris {x}"}'
