import json
from pathlib import Path

from modelyard.catalog.discovery import discover
from modelyard.catalog.spec import ModelSpec

DEFAULTS = ModelSpec(name="", path=Path(), ctx=2048)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    return path


def test_discovery_finds_gguf_files_named_after_them(tmp_path: Path) -> None:
    touch(tmp_path / "Qwen2.5-0.5B-Q4_K_M.gguf")
    touch(tmp_path / "sub" / "llama.gguf")
    touch(tmp_path / "notes.txt")
    specs = {s.name: s for s in discover(tmp_path, DEFAULTS)}
    assert set(specs) == {"qwen2.5-0.5b-q4_k_m", "llama"}
    assert specs["llama"].path == tmp_path / "sub" / "llama.gguf"
    assert specs["llama"].ctx == 2048


def test_discovery_split_shards_are_one_model(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        touch(tmp_path / f"big-model-0000{i}-of-00003.gguf")
    (spec,) = discover(tmp_path, DEFAULTS)
    assert spec.name == "big-model"
    assert spec.path.name == "big-model-00001-of-00003.gguf"
    assert [p.name for p in spec.files] == [f"big-model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_discovery_skips_incomplete_split(tmp_path: Path) -> None:
    touch(tmp_path / "big-00001-of-00002.gguf")
    assert discover(tmp_path, DEFAULTS) == []


def test_discovery_mmproj_attaches_to_sibling(tmp_path: Path) -> None:
    touch(tmp_path / "vision" / "gemma-3-4b-it-Q4_K_M.gguf")
    touch(tmp_path / "vision" / "mmproj-gemma-3-4b-it-f16.gguf")
    touch(tmp_path / "text" / "other.gguf")
    specs = {s.name: s for s in discover(tmp_path, DEFAULTS)}
    assert set(specs) == {"gemma-3-4b-it-q4_k_m", "other"}
    mmproj = specs["gemma-3-4b-it-q4_k_m"].mmproj
    assert mmproj == tmp_path / "vision" / "mmproj-gemma-3-4b-it-f16.gguf"
    assert specs["other"].mmproj is None


def test_discovery_missing_dir_is_empty(tmp_path: Path) -> None:
    assert discover(tmp_path / "nope", DEFAULTS) == []


def test_discovery_classifies_hugging_face_directories(tmp_path: Path) -> None:
    def model_dir(name: str, config: dict[str, object], *extra: str) -> None:
        path = tmp_path / name
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config))
        (path / "model.safetensors").write_bytes(b"\0" * 10)
        for filename in extra:
            (path / filename).write_text("[]")

    model_dir("MiniLM", {"architectures": ["BertModel"]}, "modules.json")
    model_dir("bge-reranker", {"architectures": ["XLMRobertaForSequenceClassification"],
                               "id2label": {"0": "LABEL_0"}})  # fmt: skip
    model_dir("sentiment", {"architectures": ["BertForSequenceClassification"], "num_labels": 3})
    model_dir("qwen", {"architectures": ["Qwen2ForCausalLM"]})
    touch(tmp_path / "MiniLM" / "onnx" / "stray.gguf")  # inside a model dir: not scanned
    specs = {s.name: s for s in discover(tmp_path, DEFAULTS)}
    assert set(specs) == {"minilm", "bge-reranker"}
    assert (specs["minilm"].kind, specs["minilm"].engine) == ("embedding", "encoder")
    assert (specs["bge-reranker"].kind, specs["bge-reranker"].engine) == ("rerank", "encoder")
    assert specs["minilm"].path == tmp_path / "MiniLM"


def test_discovery_mmproj_attaches_to_every_quant_of_its_model(tmp_path: Path) -> None:
    for name in ("gemma-3-4b-it-Q4_K_M", "gemma-3-4b-it-Q8_0", "mmproj-gemma-3-4b-it-f16", "tiny"):
        touch(tmp_path / f"{name}.gguf")
    specs = {s.name: s.mmproj for s in discover(tmp_path, DEFAULTS)}
    projector = tmp_path / "mmproj-gemma-3-4b-it-f16.gguf"
    assert specs == {
        "gemma-3-4b-it-q4_k_m": projector,
        "gemma-3-4b-it-q8_0": projector,
        "tiny": None,
    }


def test_discovery_skips_hidden_folders(tmp_path: Path) -> None:
    touch(tmp_path / ".partial" / "half.gguf")
    touch(tmp_path / "whole.gguf")
    assert [s.name for s in discover(tmp_path, DEFAULTS)] == ["whole"]
