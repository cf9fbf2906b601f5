"""What ``modelyard show`` says about a model, read from its files without loading it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.catalog.gguf import GGUFError, read_gguf
from modelyard.catalog.hf import parameter_count, read_config, weights_bytes
from modelyard.catalog.manifest import find_pull
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.catalog.template import model_warnings
from modelyard.errors import ModelyardError


def summarize(
    spec: ModelSpec, estimate: Callable[[], Footprint], measured: Footprint | None = None
) -> dict[str, Any]:
    """The model's identity, its files, what kind of network it is (from their headers) and
    the memory it will take (``estimate``; its error instead when the files cannot say)."""
    summary: dict[str, Any] = {
        "name": spec.name,
        "aliases": list(spec.aliases),
        "kind": spec.kind,
        "engine": spec.engine,
        "serves": list(spec.capabilities),
        "path": str(spec.path) if spec.path != Path() else None,
        "settings": _settings(spec),
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
    try:
        if spec.engine == "llamacpp":
            summary.update(_gguf(spec))
        elif spec.engine == "encoder":
            summary.update(_hf(spec))
    except (OSError, ValueError, GGUFError, struct.error) as exc:
        summary["error"] = f"cannot read {spec.path}: {exc}"
    summary["warnings"] = model_warnings(spec)
    memory: dict[str, Any] = {"estimate": None, "measured": dict(measured) if measured else None}
    if spec.engine == "llamacpp":
        memory["prompt_cache"] = spec.prompt_cache_bytes  # part of the estimate
    try:
        memory["estimate"] = dict(estimate())
    except ModelyardError as exc:
        memory["error"] = exc.message
    summary["memory"] = memory
    return summary


def _settings(spec: ModelSpec) -> dict[str, Any]:
    if spec.engine == "remote":
        return {
            "url": spec.url,
            "max_concurrency": spec.parallel,
            "upstream_model": spec.upstream_model,
            "api_key": f"env:{spec.api_key_env}" if spec.api_key_env else None,
        }
    if spec.engine == "command":
        return {
            "command": list(spec.command),
            "parallel": spec.parallel,
            "upstream_model": spec.upstream_model,
            "health": spec.health,
        }
    if spec.engine == "encoder":
        return {
            "parallel": spec.parallel,
            "backend": spec.backend,
            "max_batch": spec.max_batch,
            "max_batch_tokens": spec.max_batch_tokens,
        }
    return {"ctx": spec.ctx, "parallel": spec.parallel, "gpu_layers": spec.gpu_layers}


def _gguf(spec: ModelSpec) -> dict[str, Any]:
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


def _hf(spec: ModelSpec) -> dict[str, Any]:
    config = read_config(spec.path)
    architectures = config.get("architectures") or []
    files = [p for p in spec.path.rglob("*") if p.is_file() and ".partial" not in p.parts]
    return {
        "format": "huggingface",
        "architecture": architectures[0] if architectures else None,
        "model_type": config.get("model_type"),
        "parameter_count": parameter_count(spec.path),
        "dtype": config.get("torch_dtype") or config.get("dtype"),
        "context_length": config.get("max_position_embeddings"),
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
