import json
import struct
from pathlib import Path

import pytest

from modelyard.catalog.hf import context_length, parameter_count


def test_hf_parameter_count_reads_safetensors_headers(tmp_path: Path) -> None:
    header = json.dumps(
        {"__metadata__": {}, "a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}
    ).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert parameter_count(tmp_path) == 12


def test_hf_parameter_count_refuses_what_is_not_safetensors(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 5000)
    with pytest.raises(ValueError, match="is not a safetensors file"):
        parameter_count(tmp_path)


def test_hf_context_length_is_what_the_encoder_reads(tmp_path: Path) -> None:
    from modelyard.catalog.demo import demo_embedding_dir, demo_models
    from modelyard.catalog.spec import ModelSpec
    from modelyard.catalog.summary import summarize

    minilm = demo_embedding_dir()
    assert minilm is not None
    assert context_length(minilm) == 256  # sentence-transformers' max_seq_length
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    assert context_length(tmp_path) == 512  # the tokenizer sets no limit of its own
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    assert context_length(tmp_path) == 128
    # ``ls`` (the spec's ctx) and ``show`` say the same of the demo embedding model.
    (spec,) = [
        s for s in demo_models(ModelSpec(name="", path=Path()), tmp_path) if s.kind != "chat"
    ]
    assert spec.ctx == summarize(spec, dict)["context_length"] == 256
