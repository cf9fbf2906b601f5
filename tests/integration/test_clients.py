"""Client conformance: each client is the real package from PyPI (pinned in the dev extra),
talking to a real server on the demo models with only its base URL changed.

The demo chat model is a tiny base model: it calls tools reliably only when it must
(``tool_choice`` required or named, where modelyard holds it to one call of an offered
tool, ``dialect.forced``), so the tool tests ask so. Texts are compared at temperature 0,
where llama.cpp is deterministic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.hubserver import FakeHub
from tests.integration.conftest import HUB_REPO, Server

pytestmark = pytest.mark.integration

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        # An enum: the grammar then bounds the tiny model's argument (a free string can run
        # past max_tokens, which llama.cpp answers with a parse error).
        "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "description": "The time in a city",
    "parameters": WEATHER["parameters"],
}
QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., Server], hub: FakeHub) -> Server:
    return server_factory(None, env={"HF_ENDPOINT": hub.url})  # the demo models


@pytest.fixture
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def olla(server: Server) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.url)
    yield client
    client.close()


@pytest.fixture
def claude(server: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0) as c:
        yield c


# ---- openai ------------------------------------------------------------------------------------


def _tools(*functions: dict[str, Any]) -> Any:
    return [{"type": "function", "function": f} for f in functions]


FREE = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
"""A free-string argument: held only by llama.cpp's tool grammar, the demo model wrote text
before its call (``You may call these tools: …``)."""


@pytest.mark.parametrize(
    ("route", "choice"),
    [
        ("/v1/chat/completions", "required"),
        ("/v1/chat/completions", {"type": "function", "function": {"name": "get_time"}}),
        ("/v1/messages", {"type": "any"}),
        ("/v1/messages", {"type": "tool", "name": "get_time"}),
        ("/v1/responses", "required"),
        ("/v1/responses", {"type": "function", "name": "get_time"}),
    ],
)
def test_clients_forced_tool_calls_are_calls_and_nothing_else(
    server: Server, route: str, choice: Any
) -> None:
    named = "get_time" if "get_time" in json.dumps(choice) else None
    time_tool = {**FREE, "name": "get_time", "description": "The time in a city"}
    message = [{"role": "user", "content": QUESTION}]
    if route == "/v1/chat/completions":
        body: dict[str, Any] = {"messages": message, "tools": _tools(FREE, time_tool),
                                "max_tokens": 60}  # fmt: skip
    elif route == "/v1/messages":
        tools = [{"name": t["name"], "description": t["description"],
                  "input_schema": t["parameters"]} for t in (FREE, time_tool)]  # fmt: skip
        body = {"messages": message, "tools": tools, "max_tokens": 60}
    else:
        tools = [{"type": "function", **t} for t in (FREE, time_tool)]
        body = {"input": QUESTION, "tools": tools, "max_output_tokens": 60}
    # Temperature 0: a free string left to sampling can ramble past any length limit, and a
    # call cut short is no call.
    body = {"model": "demo", "tool_choice": choice, "temperature": 0, **body}
    answer = httpx.post(f"{server.url}{route}", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    if route == "/v1/chat/completions":
        (reply,) = data["choices"]
        assert reply["message"]["content"] is None
        assert reply["finish_reason"] == "tool_calls"
        calls = [(c["function"]["name"], c["function"]["arguments"])
                 for c in reply["message"]["tool_calls"]]  # fmt: skip
    elif route == "/v1/messages":
        assert data["stop_reason"] == "tool_use"
        assert [b["type"] for b in data["content"]] == ["tool_use"]
        calls = [(b["name"], json.dumps(b["input"])) for b in data["content"]]
    else:
        assert [o["type"] for o in data["output"]] == ["function_call"]
        calls = [(o["name"], o["arguments"]) for o in data["output"]]
    ((name, arguments),) = calls
    assert name == named or named is None
    assert isinstance(json.loads(arguments), dict)


def test_clients_openai_required_tool_call(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": QUESTION}],
        tools=_tools(WEATHER),
        tool_choice="required",
        parallel_tool_calls=False,  # else the tiny model calls it for every city in turn
        temperature=0,
        max_tokens=300,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments)["city"] in ("Paris", "London", "Tokyo")


def test_clients_openai_named_tool_streams_tool_call_deltas(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": QUESTION}],
        tools=_tools(WEATHER, TIME),
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=300,
        stream=True,
    )
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    deltas = 0
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                deltas += 1
                if call.function and call.function.name:
                    names[call.index] = call.function.name
                if call.function and call.function.arguments:
                    arguments[call.index] = arguments.get(call.index, "") + call.function.arguments
    assert finish == "tool_calls"
    assert deltas > 2  # the arguments came in pieces, as they were generated
    assert set(names.values()) == {"get_time"}  # the named one, though two were offered
    assert all("city" in json.loads(a) for a in arguments.values())


def test_clients_openai_named_tool_that_is_not_offered_is_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": QUESTION}],
            tools=_tools(WEATHER),
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert caught.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_clients_openai_legacy_completion_logprobs_and_echo(oai: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    reply = oai.completions.create(
        model="demo", prompt=prompt, max_tokens=4, logprobs=2, temperature=0
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens
    assert logprobs.token_logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == 4
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs)
    assert logprobs.top_logprobs
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    offsets = logprobs.text_offset
    assert offsets == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]

    echoed = oai.completions.create(
        model="demo", prompt=prompt, max_tokens=4, echo=True, temperature=0
    )
    assert echoed.choices[0].text == prompt + reply.choices[0].text
    stream = oai.completions.create(
        model="demo", prompt=prompt, max_tokens=4, echo=True, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == echoed.choices[0].text

    for field, value in (("suffix", "!"), ("best_of", 2)):
        with pytest.raises(openai.BadRequestError) as caught:
            oai.completions.create(model="demo", prompt=prompt, **{field: value})  # type: ignore[call-overload]
        assert caught.value.body["param"] == field  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model="demo", prompt=prompt, echo=True, logprobs=1)
    assert caught.value.body["param"] == "echo"  # type: ignore[index]


# ---- ollama ------------------------------------------------------------------------------------


def test_clients_ollama_list_show_version(olla: ollama.Client, server: Server) -> None:
    listed = {m.model: m for m in olla.list().models}
    gemma = listed["gemma-3-270m"]
    assert gemma.details is not None
    assert gemma.details.format == "gguf"
    assert gemma.details.family == "gemma3"
    assert gemma.details.quantization_level == "Q4_K_M"
    assert gemma.size
    assert gemma.size > 200_000_000
    assert gemma.digest
    assert "all-minilm-l6-v2" in listed

    shown = olla.show("demo:latest")  # Ollama's default tag resolves too
    assert shown.capabilities is not None
    assert {"completion", "tools"} <= set(shown.capabilities)
    assert shown.modelinfo is not None
    assert shown.modelinfo["gemma3.context_length"] > 0
    assert shown.template
    assert "<start_of_turn>" in shown.template
    assert shown.parameters
    assert "num_ctx" in shown.parameters
    encoder = olla.show("all-minilm").capabilities or []
    assert "embedding" in encoder
    assert "completion" not in encoder
    assert httpx.head(server.url).status_code == 200  # the ollama CLI's heartbeat
    version = httpx.get(f"{server.url}/api/version").json()
    assert version["version"].count(".") == 2


def test_clients_ollama_chat_stream_equals_whole(olla: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    options = {"temperature": 0, "num_predict": 12}
    whole = olla.chat(model="demo", messages=messages, options=options, stream=False)
    assert whole.done
    assert whole.done_reason == "length"
    assert whole.eval_count == 12
    assert whole.prompt_eval_count
    assert whole.prompt_eval_count > 5
    assert whole.total_duration
    assert whole.total_duration > 0
    parts = list(olla.chat(model="demo", messages=messages, options=options, stream=True))
    assert sum(not p.done for p in parts) > 1
    assert parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


@pytest.mark.slow
def test_clients_ollama_generate_format_and_tool_history(olla: ollama.Client) -> None:
    text = olla.generate(model="demo", prompt="Once upon a time", options={"num_predict": 5})
    assert text.done
    assert text.response
    assert text.eval_count == 5
    raw = olla.generate(model="demo", prompt="Once upon a time", raw=True,
                        options={"num_predict": 5, "temperature": 0})  # fmt: skip
    assert raw.response
    schema = {
        "type": "object",
        "properties": {"sunny": {"type": "boolean"}},
        "required": ["sunny"],
        "additionalProperties": False,
    }
    shaped = olla.generate(model="demo", prompt="Is it sunny?", format=schema,
                           options={"num_predict": 200, "temperature": 0})  # fmt: skip
    assert isinstance(json.loads(shaped.response)["sunny"], bool)
    # A conversation with a tool call and its result, as Ollama's clients send it back.
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "Sunny, 21 C", "tool_name": "get_weather"},
    ]  # fmt: skip
    answer = olla.chat(model="demo", messages=history, options={"num_predict": 8})
    assert answer.done
    assert answer.eval_count


@pytest.mark.slow
def test_clients_ollama_embed_equals_openai_embeddings(
    olla: ollama.Client, oai: openai.OpenAI
) -> None:
    texts = ["a cat on a mat", "stock markets fell"]
    ours = olla.embed(model="all-minilm", input=texts)
    theirs = oai.embeddings.create(model="all-minilm", input=texts)
    assert len(ours.embeddings) == 2
    for a, b in zip(ours.embeddings, theirs.data, strict=True):
        assert a == pytest.approx(b.embedding, abs=1e-6)
    single = olla.embeddings(model="all-minilm", prompt=texts[0])
    assert list(single.embedding) == pytest.approx(ours.embeddings[0], abs=1e-6)


def test_clients_ollama_ps_load_unload_and_errors(olla: ollama.Client) -> None:
    loaded = olla.generate(model="demo", prompt="", keep_alive="10m")  # an empty prompt loads
    assert loaded.done_reason == "load"
    (entry,) = [m for m in olla.ps().models if m.model == "gemma-3-270m"]
    assert entry.size
    assert entry.size > 100_000_000
    assert entry.size_vram == 0
    assert entry.context_length
    assert entry.expires_at is not None
    assert entry.details is not None
    assert entry.details.family == "gemma3"
    unloaded = olla.chat(model="demo", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert all(m.model != "gemma-3-270m" for m in olla.ps().models)

    with pytest.raises(ollama.ResponseError) as missing:
        olla.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404
    assert "'nope' does not exist" in missing.value.error
    with pytest.raises(ollama.ResponseError) as refused:
        olla.copy("demo", "demo-copy")
    assert refused.value.status_code == 501
    assert "does not copy models" in refused.value.error
    # The ollama client turns False into 0 itself; sent as JSON false it is refused.
    body = {"model": "demo", "keep_alive": False, "messages": [{"role": "user", "content": "hi"}]}
    bad = httpx.post(f"{olla._client.base_url}/api/chat", json=body)
    assert bad.status_code == 400
    assert "not a bool" in bad.json()["error"]


@pytest.mark.slow
def test_clients_ollama_pull_and_delete(olla: ollama.Client, server: Server) -> None:
    statuses = [p.status for p in olla.pull(HUB_REPO, stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    assert any(s and s.startswith("pulling ") and s.endswith(".gguf") for s in statuses)
    name = f"{HUB_REPO}:Q4_K_M"
    assert name in {m.model for m in olla.list().models}
    reply = olla.generate(model=name, prompt="Hello", options={"num_predict": 2})
    assert reply.eval_count == 2
    olla.generate(model=name, prompt="", keep_alive=0)  # unloaded, so it may be deleted
    assert olla.delete(name).status == "success"
    assert name not in {m.model for m in olla.list().models}


# ---- anthropic ---------------------------------------------------------------------------------


def test_clients_anthropic_messages_stream_equals_whole(claude: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": "demo",
        "max_tokens": 12,
        "system": "You answer briefly.",
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "extra_body": {"temperature": 0},  # the SDK no longer offers it as an argument
    }
    whole = claude.messages.create(**request)
    assert whole.type == "message"
    assert whole.role == "assistant"
    assert whole.stop_reason == "max_tokens"
    assert whole.usage.output_tokens == 12
    (block,) = whole.content
    assert block.type == "text"
    assert block.text
    with claude.messages.stream(**request) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == block.text
    assert final.usage.output_tokens == 12
    assert final.usage.input_tokens == whole.usage.input_tokens
    counted = claude.messages.count_tokens(
        model="demo", system=request["system"], messages=request["messages"]
    )
    assert counted.input_tokens == whole.usage.input_tokens


@pytest.mark.slow
def test_clients_anthropic_tool_use(claude: anthropic.Anthropic) -> None:
    tools: Any = [
        {"name": f["name"], "description": f["description"], "input_schema": f["parameters"]}
        for f in (WEATHER, TIME)
    ]
    request: dict[str, Any] = {
        "model": "demo",
        "max_tokens": 300,
        "messages": [{"role": "user", "content": QUESTION}],
        "tools": tools,
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "extra_body": {"temperature": 0},
    }
    reply = claude.messages.create(**request)
    assert reply.stop_reason == "tool_use"
    uses = [b for b in reply.content if b.type == "tool_use"]
    assert uses
    assert uses[0].name == "get_weather"
    assert isinstance(uses[0].input, dict)
    assert "city" in uses[0].input
    with claude.messages.stream(**request) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in streamed] == [(b.name, b.input) for b in uses]
    # The result goes back as a tool_result block; the model answers in text.
    follow = claude.messages.create(
        model="demo",
        max_tokens=8,
        tools=tools,
        messages=[
            request["messages"][0],
            {"role": "assistant", "content": [u.model_dump() for u in uses]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 21 C"}
                ],
            },
        ],
        tool_choice={"type": "none"},
    )
    assert follow.content
    assert follow.content[0].type == "text"


def test_clients_anthropic_errors_are_anthropics(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(
            model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model="demo", max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )
    assert bad.value.body["type"] == "error"  # type: ignore[index]


# ---- langchain and litellm ---------------------------------------------------------------------


@pytest.mark.slow
def test_clients_langchain_bind_tools_agent_step(server: Server) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: Literal["Paris", "London"]) -> str:
        """The weather in a city."""
        return f"Sunny in {city}"

    llm = ChatOpenAI(
        base_url=f"{server.url}/v1", api_key="unused", model="demo", temperature=0,
        max_tokens=300, max_retries=0,
    )  # fmt: skip
    bound = llm.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False)
    messages: list[Any] = [HumanMessage(QUESTION)]
    called = bound.invoke(messages)
    assert called.tool_calls
    assert called.tool_calls[0]["name"] == "get_weather"
    call = called.tool_calls[0]
    result = get_weather.invoke(call["args"])
    messages += [called, ToolMessage(result, tool_call_id=call["id"])]
    answer = llm.bind(max_tokens=8).invoke(messages)
    assert isinstance(answer.content, str)
    assert answer.response_metadata["finish_reason"]


@pytest.mark.slow
def test_clients_litellm_openai_and_ollama_providers(server: Server) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network here
    import litellm

    via_openai = litellm.completion(
        model="openai/demo", api_base=f"{server.url}/v1", api_key="unused",
        messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0,
    )  # fmt: skip
    via_ollama = litellm.completion(
        model="ollama_chat/demo", api_base=server.url,
        messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0,
    )  # fmt: skip
    texts = [r.choices[0].message.content for r in (via_openai, via_ollama)]  # type: ignore[union-attr]
    assert texts[0]
    assert texts[0] == texts[1]


# ---- openai responses --------------------------------------------------------------------------


def test_clients_openai_responses_text_and_stream(oai: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "model": "demo",
        "instructions": "You answer briefly.",
        "input": "Write one sentence about the sea.",
        "max_output_tokens": 12,
        "temperature": 0,
    }
    whole = oai.responses.create(**request)
    assert whole.object == "response"
    assert whole.status == "incomplete"
    assert whole.incomplete_details
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert whole.output_text
    assert whole.usage
    assert whole.usage.output_tokens == 12
    events: list[str] = []
    pieces = []
    for event in oai.responses.create(**request, stream=True):
        events.append(event.type)
        if event.type == "response.output_text.delta":
            pieces.append(event.delta)
        if event.type == "response.incomplete":  # cut at max_output_tokens, as OpenAI says
            final = event.response
    assert events[:2] == ["response.created", "response.in_progress"]
    assert events[-1] == "response.incomplete"
    assert len(pieces) > 1
    assert "".join(pieces) == whole.output_text == final.output_text


@pytest.mark.slow
def test_clients_openai_responses_function_call_round_trip(oai: openai.OpenAI) -> None:
    tool: Any = {"type": "function", **WEATHER}
    request: dict[str, Any] = {
        "model": "demo",
        "input": [{"role": "user", "content": QUESTION}],
        "tools": [tool],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_output_tokens": 300,
        "temperature": 0,
    }
    reply = oai.responses.create(**request)
    calls = [item for item in reply.output if item.type == "function_call"]
    assert reply.status == "completed"
    assert calls
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["city"] in ("Paris", "London", "Tokyo")
    with oai.responses.stream(**request) as stream:
        final = stream.get_final_response()
    streamed = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in streamed] == [(c.name, c.arguments) for c in calls]
    # The call and its output go back in input; nothing is kept on the server.
    follow = oai.responses.create(
        model="demo",
        input=[
            *request["input"],
            calls[0].model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny"},
        ],
        max_output_tokens=8,
    )
    assert follow.output_text
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model="demo", input="Hi", previous_response_id=reply.id)
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_clients_ollama_stream_that_the_engine_fails_raises(olla: ollama.Client) -> None:
    """A tool call left to the demo model (Ollama has no ``tool_choice``) makes llama.cpp fail
    to parse its output mid-stream: the client gets the error, not a finished answer."""
    stream = olla.chat(
        model="demo",
        messages=[{"role": "user", "content": QUESTION}],
        tools=[{"type": "function", "function": FREE}],
        options={"temperature": 0, "num_predict": 80},
        stream=True,
    )
    parts: list[Any] = []
    with pytest.raises(ollama.ResponseError, match="does not match"):
        parts.extend(stream)
    assert parts  # it had started
    assert not any(part.done for part in parts)
