"""What ``modelyard show`` says about a model, read from its files without loading it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.catalog.engine import engine_named
from modelyard.catalog.gguf import GGUFError, read_gguf
from modelyard.catalog.hf import parameter_count, read_config, weights_bytes
from modelyard.catalog.manifest import find_pull
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.errors import ModelyardError


def summarize(
    spec: ModelSpec,
    estimate: Callable[[], Footprint],
    measured: Footprint | None = None,
    home: Path | None = None,
) -> dict[str, Any]:
    """The model's identity, its files, what kind of network it is (from their headers),
    the memory it will take (``estimate``; its error instead when the files cannot say) and
    what its engine keeps of it under ``home`` across unloads."""
    summary: dict[str, Any] = {
        "name": spec.name,
        "aliases": list(spec.aliases),
        "kind": spec.kind,
        "engine": spec.engine,
        "serves": list(spec.capabilities),
        "path": str(spec.path) if spec.path != Path() else None,
        "settings": engine_named(spec.engine).settings(spec),
    }
    pulled = find_pull(spec.path) if spec.path != Path() else None
    if pulled is not None:
        _, record = pulled
        summary["pulled"] = {
            "reference": record.reference,
            "revision": record.revision,
            "commit": record.commit,
            "at": record.pulled_at,
        }
    engine = engine_named(spec.engine)
    try:
        summary.update(engine.describe(spec))
    except (OSError, ValueError, GGUFError, struct.error) as exc:
        summary["error"] = f"cannot read {spec.path}: {exc}"
    summary["warnings"] = engine.warnings(spec)
    memory: dict[str, Any] = {"estimate": None, "measured": dict(measured) if measured else None}
    cache = engine.prompt_cache(spec)
    if cache is not None:
        memory["prompt_cache"] = cache  # part of the estimate
    try:
        memory["estimate"] = dict(estimate())
        memory["parts"] = engine.estimate_parts(spec)  # what the estimate counts
    except ModelyardError as exc:
        memory["error"] = exc.message
    except (OSError, ValueError, GGUFError, struct.error):
        pass  # the estimate's own error says why
    summary["memory"] = memory
    if home is not None:
        kept = engine.kept(spec, home)
        if kept is not None:
            summary["warm_swaps"] = kept
    return summary


def gguf_summary(spec: ModelSpec) -> dict[str, Any]:
    """What a GGUF's header says."""
    info = read_gguf(spec.path, spec.shards)
    n_head = info.arch_value("attention.head_count")
    n_head_kv = info.arch_value("attention.head_count_kv", n_head)
    template = spec.chat_template or ("from the GGUF" if info.chat_template else None)
    return {
        "format": "gguf",
        "architecture": info.architecture,
        "parameter_count": info.parameters,
        "quantization": info.file_type,
        "context_length": info.arch_value("context_length"),
        "embedding_length": info.arch_value("embedding_length"),
        "layers": info.arch_value("block_count"),
        "heads": _scalar(n_head),
        "kv_heads": _scalar(n_head_kv),
        "chat_template": template,
        "files": [str(p) for p in spec.files] + ([str(spec.mmproj)] if spec.mmproj else []),
        "size": info.size + (spec.mmproj.stat().st_size if spec.mmproj else 0),
    }


def hf_summary(spec: ModelSpec) -> dict[str, Any]:
    """What a Hugging Face model directory's files say."""
    config = read_config(spec.path)
    architectures = config.get("architectures") or []
    files = [p for p in spec.path.rglob("*") if p.is_file() and ".partial" not in p.parts]
    return {
        "format": "huggingface",
        "architecture": architectures[0] if architectures else None,
        "model_type": config.get("model_type"),
        "parameter_count": parameter_count(spec.path),
        "dtype": config.get("torch_dtype") or config.get("dtype"),
        "context_length": spec.ctx,  # what it reads of one input (``hf.context_length``)
        "embedding_length": config.get("hidden_size"),
        "layers": config.get("num_hidden_layers"),
        "heads": config.get("num_attention_heads"),
        "vocab_size": config.get("vocab_size"),
        "weights_size": weights_bytes(spec.path),
        "size": sum(p.stat().st_size for p in files),
    }


def _scalar(value: Any) -> Any:
    """Per-layer lists (some GGUFs store heads per layer) shown as their distinct values."""
    if isinstance(value, list):
        distinct = sorted(set(value))
        return distinct[0] if len(distinct) == 1 else distinct
    return value
