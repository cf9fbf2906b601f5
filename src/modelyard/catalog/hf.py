"""Hugging Face model directories: what a directory holds, read from its files alone.

A sentence-transformers directory (``modules.json`` or ``config_sentence_transformers.json``)
is an ``embedding`` model; a ``*ForSequenceClassification`` model with one label is a
``rerank`` model (a cross-encoder). Other architectures are not served by the encoder engine.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.catalog.spec import ModelKind

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt")
_MAX_HEADER = 100 * 1024**2


@dataclass(frozen=True)
class HFInfo:
    kind: ModelKind | None
    """``embedding``, ``rerank``, or ``None`` when the encoder engine cannot serve it."""
    architecture: str | None
    why: str = ""
    """Why ``kind`` is ``None``."""


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "modules.json").is_file()


def read_hf_dir(path: Path) -> HFInfo:
    """Classifies ``path``; raises ``OSError``/``ValueError`` for unreadable files."""
    config = _read_json(path / "config.json")
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if architectures else None
    if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
        return HFInfo("embedding", architecture)
    if architecture and architecture.endswith("ForSequenceClassification"):
        labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
        if labels == 1:
            return HFInfo("rerank", architecture)
        return HFInfo(None, architecture, f"a classifier with {labels} labels")
    return HFInfo(None, architecture, f"architecture {architecture or 'unknown'}")


def weights_bytes(path: Path) -> int:
    """Bytes of weight files under ``path`` (one format only: safetensors win over the rest)."""
    files = [p for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
    preferred = [p for p in files if p.suffix == ".safetensors"] or [
        p for p in files if p.suffix != ".onnx"
    ]
    return sum(p.stat().st_size for p in preferred or files)


def read_config(path: Path) -> dict[str, Any]:
    """The directory's ``config.json`` (``{}`` when it has none)."""
    return _read_json(path / "config.json")


def context_length(path: Path) -> int | None:
    """The most tokens the encoder reads of one input, as sentence-transformers does:
    ``max_seq_length`` of ``sentence_bert_config.json``, else the tokenizer's
    ``model_max_length`` within the architecture's ``max_position_embeddings``."""
    configured = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
    if isinstance(configured, int) and configured > 0:
        return configured
    limits = [
        _read_json(path / "tokenizer_config.json").get("model_max_length"),
        read_config(path).get("max_position_embeddings"),
    ]
    found = [n for n in limits if isinstance(n, int) and 0 < n < 10**7]  # 1e30: "no limit"
    return min(found) if found else None


def parameter_count(path: Path) -> int | None:
    """Weights in the ``*.safetensors`` files under ``path``, from their headers alone."""
    files = sorted(path.rglob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8).ljust(8, b"\xff"))
            if length > min(file.stat().st_size - 8, _MAX_HEADER):
                raise ValueError(f"{file.name} is not a safetensors file")
            header = json.loads(f.read(length))
        try:
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        except (AttributeError, KeyError, TypeError):
            raise ValueError(f"{file.name} has a damaged safetensors header") from None
    return total


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data
