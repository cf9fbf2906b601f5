"""A fifth engine, added from a test package (``tests.toy_engine``) without a line of
``api/``, ``scheduler/`` or ``catalog/``: its config table is read from ``modelyard.toml``
(as its own table or flat), it serves through every face, and its capability set is what
the API answers by."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.api.app import create_app
from modelyard.config import Settings, load_config
from modelyard.engines import engines, register, unregister
from modelyard.errors import ConfigError
from tests.toy_engine import Toy, ToyTable
from tests.unit.api.conftest import Exchange

TOML = """
[server]
demo = false

[models.toy]
aliases = ["plaything"]
max_queue = 4

[models.toy.engine]
name = "toy"
words = 3
"""


@pytest.fixture
def toy() -> Iterator[None]:
    register(Toy())
    yield
    unregister("toy")


def load(tmp_path: Path, text: str) -> Settings:
    (tmp_path / "modelyard.toml").write_text(text)
    return Settings(config=tmp_path / "modelyard.toml", home=tmp_path / "home")


def test_engine_plugin_config_table_as_a_table_or_flat(toy: None, tmp_path: Path) -> None:
    (spec,) = load_config(load(tmp_path, TOML)).models
    assert (spec.engine, spec.options, spec.served) == ("toy", ToyTable(words=3), ("chat",))
    assert (spec.aliases, spec.max_queue, spec.parallel) == (("plaything",), 4, 2)
    flat = '[server]\ndemo = false\n[models.toy]\nengine = "toy"\npace_ms = 5\n'
    (spec,) = load_config(load(tmp_path, flat)).models
    assert spec.options == ToyTable(pace_ms=5)
    assert "toy" in engines()


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("name = 'toy'\nwords = 0", r"\[models.toy\] words: Input should be greater than 0"),
        ("name = 'toy'\ncolour = 'red'", r"\[models.toy\] colour: Extra inputs"),
        ("name = 'toy'\ngpu_layers = 3", r"\[models.toy\] gpu_layers: Extra inputs"),
        ("name = 'toys'", r"engine: unknown engine 'toys' \(known: command, encoder"),
        ("words = 3", r"engine.name: required"),
    ],
)
def test_engine_plugin_its_table_is_checked(
    toy: None, tmp_path: Path, table: str, error: str
) -> None:
    text = f"[server]\ndemo = false\n[models.toy]\n[models.toy.engine]\n{table}\n"
    with pytest.raises(ConfigError, match=error):
        load_config(load(tmp_path, text))


def test_engine_plugin_unknown_once_unregistered(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown engine 'toy'"):
        load_config(load(tmp_path, TOML))


async def test_engine_plugin_serves_by_its_own_settings_and_capabilities(
    toy: None, tmp_path: Path
) -> None:
    settings = load(tmp_path, TOML)
    app = create_app(load_config(settings), settings=settings, budget={"ram": 1024**3})

    async def call(path: str, body: object = None, method: str = "POST") -> Exchange:
        exchange = Exchange(app, method, path, body, {}, None)
        await exchange.done
        return exchange

    chat = {"model": "plaything", "messages": [{"role": "user", "content": "hi"}]}
    async with app.router.lifespan_context(app):
        answer = await call("/v1/chat/completions", chat)
        assert answer.status == 200, answer.body
        assert answer.json()["choices"][0]["message"]["content"]
        streamed = await call("/v1/chat/completions", {**chat, "stream": True})
        words = [
            e["choices"][0]["delta"]["content"]
            for e in streamed.events()
            if e != "[DONE]" and e["choices"] and e["choices"][0]["delta"].get("content")
        ]
        assert len(words) == 3  # its own ``words``
        ollama = await call("/api/chat", {**chat, "stream": False})
        assert ollama.status == 200
        assert ollama.json()["message"]["content"]
        # Its capability set: no tools, no embeddings, no token counting.
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        refused = await call("/v1/chat/completions", {**chat, "tools": tools})
        assert refused.status == 400
        assert refused.json()["error"]["param"] == "tools"
        vectors = await call("/v1/embeddings", {"model": "toy", "input": "hi"})
        assert vectors.status == 400
        assert "serves chat;" in vectors.json()["error"]["message"]
        counted = await call(
            "/v1/messages/count_tokens", {"model": "toy", "messages": chat["messages"]}
        )
        assert counted.status == 400
        shown = (await call("/api/show", {"model": "toy"})).json()
        assert (shown["engine"], shown["capabilities"]) == ("toy", ["completion"])
        assert shown["settings"] == {"words": 3, "pace_ms": 0.0}
