"""The translations, fed the chat chunks llama.cpp sends: what the tiny demo model cannot be
made to produce in the integration tests (reasoning, tool calls left to the model, a stream
cut short) is checked here on the exact shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelyard.dialect.anthropic import AnthropicDialect, chat_payload
from modelyard.dialect.base import sse_events
from modelyard.dialect.legacy import LegacyCompletion
from modelyard.dialect.ollama import OllamaDialect, chat_messages, image_part, sampling
from modelyard.dialect.responses import ResponsesDialect
from modelyard.dialect.responses import chat_payload as responses_payload
from modelyard.errors import InvalidRequestError, RunnerError, UnsupportedFeatureError


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def call_delta(index: int, name: str | None, arguments: str, id_: str | None = None) -> Any:
    function: dict[str, Any] = {"arguments": arguments}
    if name:
        function["name"] = name
    return chunk({"tool_calls": [{"index": index, "id": id_, "function": function}]})


USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}
TIMINGS = {"prompt_n": 7, "prompt_ms": 12.5, "predicted_n": 5, "predicted_ms": 40.0}


def streamed(dialect: Any, chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(dialect.feed(c) for c in chunks) + dialect.close()


# ---- ollama ------------------------------------------------------------------------------------


def test_ollama_stream_thinking_text_tool_calls_and_counters() -> None:
    dialect = OllamaDialect("qwen:latest")
    body = streamed(
        dialect,
        [
            chunk({"reasoning_content": "Paris is in France. "}),
            chunk({"content": "Let me check."}),
            call_delta(0, "get_weather", '{"ci', "c1"),
            call_delta(0, None, 'ty": "Paris"}'),
            call_delta(1, "get_time", "{}", "c2"),
            {**chunk({}, "tool_calls"), "timings": TIMINGS},
            USAGE,
        ],
    )
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[0]["message"] == {
        "role": "assistant",
        "content": "",
        "thinking": "Paris is in France. ",
    }
    assert lines[1]["message"]["content"] == "Let me check."
    assert all(line["model"] == "qwen:latest" for line in lines)
    calls = lines[2]["message"]["tool_calls"]
    assert calls == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_time", "arguments": {}}},
    ]  # whole, with arguments as objects, in the line before the last
    last = lines[-1]
    assert last["done"] is True
    assert last["done_reason"] == "stop"
    assert (last["prompt_eval_count"], last["eval_count"]) == (7, 5)
    assert (last["prompt_eval_duration"], last["eval_duration"]) == (12_500_000, 40_000_000)
    assert not any(line["done"] for line in lines[:-1])


def test_ollama_generate_answer_and_a_completion_text() -> None:
    dialect = OllamaDialect("demo", generate=True)
    answer = {"choices": [{"text": "Once", "finish_reason": "length"}], "usage": USAGE["usage"]}
    line = json.loads(dialect.answer(json.dumps(answer).encode()))
    assert (line["response"], line["done_reason"], line["eval_count"]) == ("Once", "length", 5)
    with pytest.raises(RunnerError):
        dialect.answer(b"not json")


def test_ollama_messages_images_tool_history_and_options() -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"  # a PNG's first bytes
    messages = chat_messages(
        [
            {"role": "user", "content": "What is this?", "images": [png]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "look", "arguments": {"x": 1}}},
                    {"function": {"name": "zoom", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "zoomed", "tool_name": "zoom"},
            {"role": "tool", "content": "a cat"},
        ]
    )
    assert messages[0]["content"][0] == {"type": "text", "text": "What is this?"}
    assert messages[0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"x": 1}
    assert messages[2]["tool_call_id"] == ids[1]  # matched by tool_name
    assert messages[3]["tool_call_id"] == ids[0]  # the one still unanswered
    jpeg = image_part("/9j/4AAQSkZJRgABAQ==", 0)["image_url"]["url"]
    assert jpeg.startswith("data:image/jpeg;base64,")
    fields = sampling({"num_predict": -1, "temperature": 0.2, "num_keep": 4, "num_ctx": 8192})
    assert fields == {"temperature": 0.2, "n_keep": 4}  # -1: no limit; num_ctx: the catalog's
    assert sampling({"num_predict": 12})["max_tokens"] == 12
    assert sampling({"temprature": 1}) == {}  # as Ollama does: ignored (and logged)
    with pytest.raises(InvalidRequestError):
        sampling({"num_predict": "many"})


# ---- anthropic ---------------------------------------------------------------------------------


def events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in body.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            found.append((name.removeprefix(b"event: ").decode(), json.loads(data[6:])))
    return found


def test_anthropic_stream_events_for_thinking_text_and_tool_use() -> None:
    dialect = AnthropicDialect("claude-ish", "msg_1")
    body = streamed(
        dialect,
        [
            chunk({"reasoning_content": "hmm"}),
            chunk({"content": "Checking."}),
            call_delta(0, "get_weather", '{"city"', "call_9"),
            call_delta(0, None, ': "Paris"}'),
            chunk({}, "tool_calls"),
            USAGE,
        ],
    )
    names = [name for name, _ in events(body)]
    assert names == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_stop",  # thinking
        "content_block_start", "content_block_delta", "content_block_stop",  # text
        "content_block_start", "content_block_delta", "content_block_delta",  # tool_use
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    parsed = events(body)
    tool = parsed[7][1]
    assert tool["index"] == 2
    assert tool["content_block"] == {
        "type": "tool_use",
        "id": "call_9",
        "name": "get_weather",
        "input": {},
    }
    pieces = "".join(
        d["delta"]["partial_json"]
        for n, d in parsed
        if d.get("index") == 2 and n == "content_block_delta"
    )
    assert json.loads(pieces) == {"city": "Paris"}
    delta = parsed[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {"input_tokens": 7, "output_tokens": 5}


def test_anthropic_request_translation() -> None:
    payload = chat_payload(
        {
            "model": "m",
            "max_tokens": 10,
            "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": "no",
                            "is_error": True,
                        },
                    ],
                },
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        }
    )
    messages = payload["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["content"][1]["image_url"]["url"] == "data:image/png;base64,AAAA"
    assert messages[2]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert messages[3] == {"role": "tool", "tool_call_id": "t1", "content": "Error: no"}
    assert (payload["tool_choice"], payload["parallel_tool_calls"]) == ("required", False)
    assert payload["stop"] == ["END"]
    with pytest.raises(UnsupportedFeatureError):
        chat_payload(
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            }
        )


# ---- responses ---------------------------------------------------------------------------------


def test_responses_stream_events_are_numbered_and_complete() -> None:
    dialect = ResponsesDialect("m", "resp_x", {"model": "m", "input": "hi"})
    body = streamed(
        dialect,
        [
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            call_delta(0, "f", '{"a": 1}', "c1"),
            chunk({}, "tool_calls"),
            USAGE,
        ],
    )
    parsed = [data for _, data in events(body)]
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    kinds = [e["type"] for e in parsed]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]  # fmt: skip
    assert kinds.count("response.output_text.delta") == 2
    assert "response.output_text.done" in kinds
    assert "response.function_call_arguments.done" in kinds
    final = parsed[-1]
    assert final["type"] == "response.completed"
    output = final["response"]["output"]
    assert output[0]["content"][0]["text"] == "Hello"
    assert (output[1]["name"], output[1]["arguments"], output[1]["call_id"]) == (
        "f",
        '{"a": 1}',
        "c1",
    )
    assert final["response"]["usage"]["total_tokens"] == 12


def test_responses_request_translation_and_refusals() -> None:
    payload = responses_payload(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "max_output_tokens": 9,
        }
    )
    messages = payload["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]  # one message
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert payload["response_format"]["json_schema"]["name"] == "x"
    assert payload["max_tokens"] == 9
    for bad in ({"previous_response_id": "resp_1"}, {"tools": [{"type": "web_search"}]}):
        with pytest.raises(UnsupportedFeatureError):
            responses_payload({"model": "m", "input": "hi", **bad})


# ---- legacy completions ------------------------------------------------------------------------


def test_legacy_completion_logprobs_offsets_continue_across_chunks_and_usage_is_dropped() -> None:
    def token(text: str, lp: float) -> dict[str, Any]:
        return {"token": text, "logprob": lp, "top_logprobs": [{"token": text, "logprob": lp}]}

    dialect = LegacyCompletion("m", "Say:", usage=False)
    first = {
        "choices": [{"index": 0, "text": " hi", "logprobs": {"content": [token(" hi", -0.5)]}}]
    }
    second = {
        "choices": [{"index": 0, "text": " you", "logprobs": {"content": [token(" you", -1.0)]}}]
    }
    body = dialect.feed(first) + dialect.feed(second) + dialect.feed(USAGE) + dialect.close()
    events_ = sse_events(body)[0]
    assert events_[-1] == b"[DONE]"
    one, two = (json.loads(e)["choices"][0] for e in events_[:2])
    assert one["text"] == "Say: hi"  # the prompt first (echo)
    assert one["logprobs"] == {"tokens": [" hi"], "token_logprobs": [-0.5],
                               "top_logprobs": [{" hi": -0.5}], "text_offset": [4]}  # fmt: skip
    assert two["logprobs"]["text_offset"] == [7]
    assert len(events_) == 3  # the usage chunk the client did not ask for is not sent
