"""The engine seam: every engine a catalog entry may name has one, and what the API asks of
an engine it answers (a plain server passes requests as they are; llama.cpp's are shaped)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from modelyard.catalog.spec import ModelSpec
from modelyard.engines import Engine, engine_of, engines
from modelyard.errors import UnsupportedFeatureError
from modelyard.protocol.openai import ChatCompletionRequest

SPEC = ModelSpec(name="m", path=Path("/models/m.gguf"))


def test_engines_the_built_in_ones_are_installed_as_plugins() -> None:
    found = engines()
    assert set(found) >= {"llamacpp", "encoder", "command", "remote"}
    for name, engine in found.items():
        assert isinstance(engine, Engine)
        assert engine.name == name


def test_engines_a_plain_server_takes_requests_as_they_are() -> None:
    engine = engine_of(replace(SPEC, engine="command"))
    payload = {"dimensions": 8, "truncate": True}
    assert engine.adapt_embedding(8, "float", payload) is None
    assert payload == {"dimensions": 8, "truncate": True}
    assert not engine.gathers
    assert not engine.sized


def test_engines_llamacpp_embeddings_are_shortened_by_the_gateway() -> None:
    payload = {"input": "x", "dimensions": 2, "truncate": True, "encoding_format": "base64"}
    shape = engine_of(SPEC).adapt_embedding(2, "float", payload)
    assert payload == {"input": "x", "encoding_format": "float"}
    assert shape is not None
    answer = json.loads(shape(json.dumps({"data": [{"embedding": [3.0, 4.0, 12.0]}]}).encode()))
    vector = answer["data"][0]["embedding"]
    assert len(vector) == 2
    assert math.isclose(vector[0], 0.6)
    assert math.isclose(vector[1], 0.8)


def test_engines_llamacpp_refuses_images_without_a_projector() -> None:
    parsed = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                }
            ],
        }
    )
    with pytest.raises(UnsupportedFeatureError, match="multimodal projector"):
        engine_of(SPEC).adapt_chat(SPEC, parsed, {}, None)


def test_engines_a_broken_plugin_leaves_the_others_loaded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another package's engine that fails to import is logged and left out; the built-in
    ones still load."""
    import importlib.metadata

    from modelyard.catalog import engine as registry

    real = importlib.metadata.entry_points(group=registry.ENTRY_POINTS)
    broken = importlib.metadata.EntryPoint(
        name="broken", value="modelyard_no_such_package:Engine", group=registry.ENTRY_POINTS
    )
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: [*real, broken] if group else []
    )
    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "_loaded", False)
    assert registry.names() == ["command", "encoder", "llamacpp", "remote"]
    assert "engine 'broken' (modelyard_no_such_package:Engine) did not load" in caplog.text


def test_engines_encoder_estimate_counts_its_largest_batch() -> None:
    """An encoder's estimate grows with the batch it may run and with the square of the
    input length (attention), and ONNX Runtime holds a second copy of the weights."""
    from modelyard.catalog.demo import demo_embedding_dir
    from modelyard.engines.encoder.runner import footprint_parts

    path = demo_embedding_dir()
    assert path is not None
    spec = ModelSpec(name="e", path=path, engine="encoder", kind="embedding", ctx=256)
    assert spec.backend == "auto"  # either, by measured speed: estimated as the larger
    auto = footprint_parts(spec)
    spec = replace(spec, backend="torch")
    torch = footprint_parts(spec)
    both = (torch, footprint_parts(replace(spec, backend="onnx")))
    assert auto in both
    assert sum(auto.values()) == max(sum(p.values()) for p in both)
    assert set(torch) == {"worker", "weights", "activations"}
    assert engine_of(spec).estimate_parts(spec) == torch
    onnx = replace(spec, backend="onnx")
    full = footprint_parts(onnx)
    assert full["weights"] == 2 * torch["weights"]
    fewer = footprint_parts(replace(onnx, max_batch_tokens=1024))  # 4 inputs of 256, not 32
    assert fewer["activations"] < full["activations"] / 4
    shorter = footprint_parts(replace(onnx, ctx=128))  # 32 inputs of 128 tokens
    assert full["activations"] / 4 < shorter["activations"] < full["activations"] / 2
