"""What Ollama's clients read about a model (``/api/tags``, ``/api/show``, ``/api/ps``):
``details``, ``model_info``, ``capabilities``, the template and a digest, from the model's
files without loading it."""

from __future__ import annotations

import datetime
import hashlib
import struct
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from modelyard.catalog.engine import engine_named
from modelyard.catalog.gguf import GGUFError, GGUFInfo
from modelyard.catalog.hf import parameter_count, read_config
from modelyard.catalog.spec import ModelSpec
from modelyard.catalog.template import jinja_file

_MAX_INFO_TEXT = 256
"""Longer GGUF strings (the chat template, licences) are left out of ``model_info``."""


@dataclass(frozen=True)
class Details:
    details: dict[str, Any]
    model_info: dict[str, Any] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    template: str = ""
    size: int = 0
    digest: str = ""
    modified_at: str | None = None
    context_length: int | None = None


_described: dict[str, tuple[tuple[object, ...], Details]] = {}
"""By model name: what its details were read from, and what they are (one entry per model
of the catalog, however large; a model's change replaces its entry)."""
"""Details by what they are read from: ``/api/ps`` and ``/api/tags`` ask on every call, and
an encoder's are read from every weight file's header."""


def describe(spec: ModelSpec) -> Details:
    """The model's details (reads file headers: call it in a thread), read again only when
    its entry or its path's modification time changes."""
    try:
        changed = spec.path.stat().st_mtime_ns if spec.path != Path() else 0
    except OSError:
        changed = -1
    key = (
        spec.name,
        spec.path,
        spec.engine,
        spec.kind,
        spec.chat_template,
        spec.mmproj,
        spec.gpus,
        spec.ctx,
        spec.served,
        spec.url,
        changed,
    )
    known = _described.get(spec.name)
    if known is not None and known[0] == key:
        return known[1]
    found = _read(spec)
    _described[spec.name] = (key, found)
    return found


def _read(spec: ModelSpec) -> Details:
    try:
        found = engine_named(spec.engine).details(spec)
    except (OSError, ValueError, GGUFError, struct.error):
        found = None
    if found is not None:
        return found
    return Details(
        details=_details(spec.engine, "", "", ""),
        capabilities=_capabilities(spec, ""),
        digest=_digest(spec, 0, 0),
        context_length=spec.ctx,
    )


def gguf_details(spec: ModelSpec, info: GGUFInfo) -> Details:
    """What a GGUF's header says, in Ollama's words."""
    arch = info.architecture
    model_info = {
        key: value
        for key, value in info.metadata.items()
        if isinstance(value, int | float | bool)
        or (isinstance(value, str) and len(value) <= _MAX_INFO_TEXT)
    }
    model_info["general.parameter_count"] = info.parameters
    file = jinja_file(spec)
    template = spec.chat_template or info.chat_template or ""
    if file is not None and file.is_file():
        template = file.read_text(errors="replace")
    files = [*spec.files, *([spec.mmproj] if spec.mmproj else [])]
    stats = [p.stat() for p in files]
    size = sum(s.st_size for s in stats)
    mtime = max(s.st_mtime for s in stats)
    return Details(
        details=_details("gguf", arch, parameter_size(info.parameters), info.file_type or ""),
        model_info=model_info,
        capabilities=_capabilities(spec, template),
        template=template,
        size=size,
        digest=_digest(spec, size, mtime),
        modified_at=_iso(mtime),
        context_length=spec.ctx,
    )


def hf_details(spec: ModelSpec) -> Details:
    """What a Hugging Face model directory's files say, in Ollama's words."""
    config = read_config(spec.path)
    arch = str(config.get("model_type") or "unknown")
    count = parameter_count(spec.path) or 0
    files = [p for p in spec.path.rglob("*") if p.is_file() and ".partial" not in p.parts]
    stats = [p.stat() for p in files]
    size = sum(s.st_size for s in stats)
    mtime = max((s.st_mtime for s in stats), default=0.0)
    model_info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": count}
    for ours, theirs in (
        ("context_length", "max_position_embeddings"),
        ("embedding_length", "hidden_size"),
        ("block_count", "num_hidden_layers"),
        ("attention.head_count", "num_attention_heads"),
    ):
        if isinstance(config.get(theirs), int):
            model_info[f"{arch}.{ours}"] = config[theirs]
    dtype = config.get("torch_dtype") or config.get("dtype") or ""
    size_text = parameter_size(count) if count else ""
    return Details(
        details=_details("safetensors", arch, size_text, str(dtype).upper()),
        model_info=model_info,
        capabilities=_capabilities(spec, ""),
        size=size,
        digest=_digest(spec, size, mtime),
        modified_at=_iso(mtime) if mtime else None,
        context_length=spec.ctx,
    )


def _details(fmt: str, family: str, size: str, quantization: str) -> dict[str, Any]:
    """Ollama's ``details`` object."""
    return {
        "parent_model": "",
        "format": fmt,
        "family": family,
        "families": [family] if family else None,
        "parameter_size": size,
        "quantization_level": quantization,
    }


def _capabilities(spec: ModelSpec, template: str) -> list[str]:
    """Ollama's words: ``completion``, ``tools``, ``vision``, ``thinking``, ``embedding``
    (and ``rerank``, which Ollama lacks)."""
    serves = spec.capabilities
    found = []
    if "chat" in serves or "completion" in serves:
        found.append("completion")
        abilities = engine_named(spec.engine).abilities(spec, template)
        if "tools" in abilities:
            found.append("tools")
        if spec.mmproj is not None:
            found.append("vision")
        if "thinking" in abilities:
            found.append("thinking")
    if "embedding" in serves:
        found.append("embedding")
    if "rerank" in serves:
        found.append("rerank")
    return found


def ollama_name(spec: ModelSpec) -> str:
    """The name Ollama's clients list a model by: a pulled model's reference, as it was
    pulled (``owner/repo:Q4_K_M``), else its catalog name. Every alias resolves anyway."""
    return next((alias for alias in spec.aliases if "/" in alias), spec.name)


def parameter_size(count: int) -> str:
    """Ollama's way: ``268.10M``, ``8.0B``."""
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    if count >= 1e6:
        return f"{count / 1e6:.2f}M"
    return str(count)


def _digest(spec: ModelSpec, size: int, mtime: float) -> str:
    """Stands for the model's files: changes when they do (Ollama's is its manifest's)."""
    key = f"{spec.name}\0{spec.path}\0{size}\0{mtime}\0{spec.url}"
    return hashlib.sha256(key.encode()).hexdigest()


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
