"""The one rule for lengths, the token tally of answers and streams, and gathered answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelyard.api.gather import Gathering
from modelyard.api.length import generation
from modelyard.api.tally import Tally
from modelyard.errors import InvalidRequestError, RunnerError


@pytest.mark.parametrize(
    ("payload", "per_answer", "answers", "asked"),
    [
        ({}, 4096, 1, False),  # no limit: the context
        ({"max_tokens": 1, "n_predict": 150}, 1, 1, True),  # the smallest is sent
        ({"n_predict": 150}, 150, 1, True),
        ({"n_predict": -1}, 4096, 1, False),  # llama.cpp's "no limit"
        ({"max_completion_tokens": 7, "max_tokens": 9}, 7, 1, True),
        ({"max_tokens": 10**9}, 4096, 1, True),  # never past the context
        ({"max_tokens": 4, "n": 3}, 4, 3, True),
        ({"max_tokens": 4, "n_cmpl": 2, "best_of": 3}, 4, 3, True),
        ({"max_tokens": 4, "prompt": ["a", "b"], "n": 2}, 4, 4, True),
        ({"max_tokens": 4, "prompt": [1, 2, 3]}, 4, 1, True),  # one prompt of token ids
        ({"max_tokens": 0}, 0, 1, True),
    ],
)
def test_length_reads_every_knob(
    payload: dict[str, Any], per_answer: int, answers: int, asked: bool
) -> None:
    length = generation(dict(payload), ctx=4096, prompt=100)
    assert (length.per_answer, length.answers, length.asked) == (per_answer, answers, asked)
    assert length.worst == 100 + per_answer * answers
    sent = dict(payload)
    length.apply(sent, sized=True)
    assert sent["max_tokens"] == per_answer
    assert "n_predict" not in sent
    assert "max_completion_tokens" not in sent


def test_length_other_engines_get_no_limit_the_request_did_not_set() -> None:
    sent: dict[str, Any] = {"n_predict": -1}
    generation(sent, ctx=4096, prompt=10).apply(sent, sized=False)
    assert sent == {}
    sent = {"n_predict": 5}
    generation(sent, ctx=4096, prompt=10).apply(sent, sized=False)
    assert sent == {"max_tokens": 5}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"max_tokens": "5"}, "max_tokens"),
        ({"n_predict": True}, "n_predict"),
        ({"n_predict": -3}, "n_predict"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n_cmpl": 100}, "n_cmpl"),
        ({"best_of": "2"}, "best_of"),
    ],
)
def test_length_bad_values_name_their_field(payload: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        generation(payload, ctx=4096, prompt=10)
    assert caught.value.param == param


def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + (
        b"data: [DONE]\n\n"
    )


def token(index: int, text: str, generated: int, chat: bool = True) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": None}
    if chat:
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    return {
        "object": "chat.completion.chunk" if chat else "text_completion",
        "id": "x",
        "created": 1,
        "model": "m",
        "choices": [choice],
        "timings": {"prompt_n": 4, "cache_n": 1, "predicted_n": generated},
    }


def test_tally_counts_every_answer_of_a_stream_cut_anywhere() -> None:
    stream = sse(
        token(0, "a", 1),
        token(1, "b", 1),
        token(1, "c", 2),
        token(0, "d", 2),
        token(2, "e", 1),
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    )
    for size in (1, 7, 64, len(stream)):
        tally = Tally(prompts=1)
        for at in range(0, len(stream), size):
            tally.feed(stream[at : at + size])
        # Five tokens in three answers; the prompt (4 read + 1 cached) once for all three.
        assert tally.tokens() == (5, 5), size


def test_tally_of_a_stopped_stream_is_what_was_generated() -> None:
    tally = Tally(prompt_bound=300)
    tally.feed(sse(token(0, "a", 1), token(0, "b", 2), token(0, "c", 3))[:-14])
    assert tally.tokens() == (5, 3)
    # Three answers to one prompt, stopped before the third said anything: one prompt.
    early = Tally(prompts=1)
    early.feed(sse(token(0, "a", 1), token(1, "b", 1)))
    assert early.tokens() == (5, 2)


def test_tally_prefers_the_engines_final_usage_then_counts_events() -> None:
    whole = Tally()
    usage = {"prompt_tokens": 9, "completion_tokens": 1}
    whole.feed(sse(token(0, "a", 1), {"choices": [], "usage": usage}))
    assert whole.tokens() == (9, 1)
    bare = Tally(prompt_bound=40)  # an engine that reports nothing until its end
    bare.feed(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n' * 3)
    assert bare.tokens() == (40, 3)


def test_gather_makes_a_whole_answer_with_every_choices_usage() -> None:
    stream = sse(
        {**token(0, "", 0), "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        token(0, "Hel", 1),
        token(1, "Yo", 1),
        token(0, "lo", 2),
        {**token(1, "", 1), "choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]},
        {**token(0, "", 2), "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
    )
    gathering = Gathering(Tally(prompts=1))
    for at in range(0, len(stream), 7):  # cut anywhere
        gathering.feed(stream[at : at + 7])
    answer = json.loads(gathering.answer())
    assert answer["object"] == "chat.completion"
    assert [c["message"]["content"] for c in answer["choices"]] == ["Hello", "Yo"]
    assert [c["finish_reason"] for c in answer["choices"]] == ["length", "stop"]
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    two = sse(token(0, "a", 1, chat=False), token(1, "b", 1, chat=False))
    legacy = Gathering(Tally(prompts=2))
    legacy.feed(two)
    assert json.loads(legacy.answer())["usage"]["prompt_tokens"] == 10
    assert [c["text"] for c in json.loads(legacy.answer())["choices"]] == ["a", "b"]


def test_tally_takes_each_answers_final_count_from_its_usage_chunk() -> None:
    """A token that made no text (half a character) has no chunk; the usage chunk after its
    answer's end carries the final count."""
    final = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3},
             "timings": {"prompt_n": 4, "cache_n": 1, "predicted_n": 3}}  # fmt: skip
    tally = Tally()
    tally.feed(sse(token(1, "a", 1), token(0, "b", 1), token(1, "c", 2),
                   {"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]},
                   final, token(0, "d", 2)))  # fmt: skip
    assert tally.tokens() == (5, 5)  # answer 1: three tokens, answer 0: two so far


def test_gather_keeps_one_answers_timings_and_reports_an_engine_failure() -> None:
    one = Gathering(Tally())
    one.feed(sse(token(0, "a", 1), token(0, "b", 2)))
    answer = json.loads(one.answer())
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 1}
    assert answer["timings"]["predicted_n"] == 2
    failed = Gathering(Tally())
    with pytest.raises(RunnerError, match="Failed to parse"):
        failed.feed(sse(token(0, "a", 1), {"error": {"message": "Failed to parse input"}}))
    with pytest.raises(RunnerError, match="empty stream"):
        Gathering(Tally()).answer()


def test_gather_joins_reasoning_tool_calls_and_logprobs_piece_by_piece() -> None:
    def delta(**fields: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": fields, "logprobs": {"content": [{"token": "t"}]}}
        return {"object": "chat.completion.chunk", "id": "x", "choices": [choice]}

    call = {"index": 0, "id": "call_1", "function": {"name": "get_", "arguments": '{"ci'}}
    more = {"index": 0, "function": {"name": "weather", "arguments": 'ty": "Oslo"}'}}
    gathering = Gathering(Tally())
    gathering.feed(
        sse(
            delta(role="assistant", reasoning_content="Let me "),
            delta(reasoning_content="look."),
            delta(tool_calls=[call]),
            delta(tool_calls=[more, {"index": 1, "id": "call_2", "function": {"name": "now"}}]),
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        )
    )
    (choice,) = json.loads(gathering.answer())["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "reasoning_content": "Let me look.",
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
        ],
    }  # fmt: skip
    assert choice["logprobs"] == {"content": [{"token": "t"}] * 4}
