"""What the scheduler and the runners know about one model."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ModelKind = Literal["chat", "embedding", "rerank"]
Engine = Literal["llamacpp"]

Footprint = Mapping[str, int]
"""Bytes per device: ``{"ram": ...}`` and, where a GPU is used, ``{"gpu0": ...}``."""

DEFAULT_KEEP_ALIVE = 300.0


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry, resolved: absolute paths, defaults applied, durations in seconds."""

    name: str
    path: Path
    kind: ModelKind = "chat"
    engine: Engine = "llamacpp"
    aliases: tuple[str, ...] = ()
    ctx: int = 4096
    """Context per parallel slot (tokens); the runner allocates ``ctx * parallel`` in all."""
    parallel: int = 4
    threads: int | None = None
    gpu_layers: int = 0
    chat_template: str | None = None
    mmproj: Path | None = None
    extra_args: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    keep_alive: float | None = DEFAULT_KEEP_ALIVE
    """Seconds to stay loaded after the last request; ``None`` means forever."""
    pinned: bool = False
    preload: bool = False
    max_queue: int = 64
    queue_timeout: float = 120.0
    memory: int | None = None
    """Bytes; overrides the estimate (and the measurement) when set."""
    llama_server: Path | None = None
    """A ``llama-server`` binary to exec instead of the bundled xllamacpp engine."""
    shards: tuple[Path, ...] = ()
    """Every file of a split GGUF (``path`` is the first); empty for a single file."""

    @property
    def files(self) -> tuple[Path, ...]:
        return self.shards or (self.path,)

    @functools.cached_property
    def settings_key(self) -> str:
        """Identifies the settings that change a model's footprint, to remember measurements."""
        settings = {
            "files": [str(p) for p in self.files],
            "ctx": self.ctx,
            "parallel": self.parallel,
            "gpu_layers": self.gpu_layers,
            "mmproj": str(self.mmproj) if self.mmproj else None,
            "extra_args": list(self.extra_args),
            "engine": self.engine,
            "llama_server": str(self.llama_server) if self.llama_server else None,
        }
        blob = json.dumps(settings, sort_keys=True).encode()
        return f"{self.name}:{hashlib.sha256(blob).hexdigest()[:16]}"
