"""What the scheduler and the runners know about one model."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

ModelKind = Literal["chat", "embedding", "rerank"]
EncoderBackend = Literal["auto", "torch", "onnx"]

Footprint = Mapping[str, int]
"""Bytes per device: ``{"ram": ...}`` and, where a GPU is used, ``{"gpu0": ...}``."""

DEFAULT_KEEP_ALIVE = 300.0
PROMPT_CACHE_SHARE = 0.25
"""Default host-RAM prompt cache of a llama.cpp model: this share of its weight files."""
PROMPT_CACHE_MIN = 32 * 1024**2
PROMPT_CACHE_MAX = 8 * 1024**3
"""llama.cpp's own default, reached only by weights of 32 GiB and more."""
ENCODER_PARALLEL = 64
"""Requests let through to an encoder worker at once (it batches them) unless configured."""


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry, resolved: absolute paths, defaults applied, durations in seconds."""

    name: str
    path: Path
    kind: ModelKind = "chat"
    engine: str = "llamacpp"
    """The engine it runs on (``modelyard.catalog.engine``: a registered name)."""
    aliases: tuple[str, ...] = ()
    ctx: int = 4096
    """Context per parallel slot (tokens); the runner allocates ``ctx * parallel`` in all."""
    parallel: int = 4
    """Requests served at once: llama.cpp's slots; for the encoder, what its batcher may merge."""
    threads: int | None = None
    gpu_layers: int | Literal["auto"] = 0
    """llama.cpp: layers offloaded to the GPU (-1: all; ``auto``: chosen at each load by the
    scheduler, as many as fit)."""
    gpus: tuple[int, ...] = ()
    """GPUs the runner may use (NVML's numbers); empty: none."""
    chat_template: str | None = None
    mmproj: Path | None = None
    extra_args: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    keep_alive: float | None = DEFAULT_KEEP_ALIVE
    """Seconds to stay loaded after the last request; ``None`` means forever."""
    pinned: bool = False
    preload: bool = False
    max_queue: int = 64
    queue_timeout: float | None = 120.0
    """Seconds a request may wait for a slot (and a load); ``None`` means forever."""
    memory: int | None = None
    """Bytes; overrides the estimate (and the measurement) when set."""
    gpu_memory: int | None = None
    """Bytes on each of ``gpus``; overrides the estimate there (with ``memory``, entirely)."""
    llama_server: Path | None = None
    """A ``llama-server`` binary to exec instead of the bundled xllamacpp engine."""
    shards: tuple[Path, ...] = ()
    """Every file of a split GGUF (``path`` is the first); empty for a single file."""
    backend: EncoderBackend = "auto"
    """Encoder engine: run the model with torch, or exported to ONNX Runtime; ``auto``: the
    faster of the two, measured on the model's first load (``workers.encoder_choice``)."""
    max_batch: int = 32
    """Encoder engine: most inputs (texts or query/document pairs) in one forward pass."""
    batch_wait: float = 0.005
    """Encoder engine: seconds a batch may wait to fill while requests keep coming."""
    max_batch_tokens: int = 16384
    """Encoder engine: most padded tokens in one forward pass."""
    bucketing: bool = True
    """Encoder engine: each round's inputs are ordered by length and split where padding
    would cost more than another forward pass; ``False``: batches in arrival order."""
    truncate: bool = False
    """Over-long inputs are cut to the model's limit (``True``) or rejected with a 400."""
    matryoshka: bool = False
    """The embedding model was trained to be cut short: requests may ask for ``dimensions``."""
    prompt_cache: int | None = None
    """llama.cpp: bytes of host RAM for cached prompt states (0: none); ``None``: the default
    share of the weights (see ``prompt_cache_bytes``)."""
    kv_cache_disk: int = 4 * 1024**3
    """llama.cpp: bytes of disk the saved KV states of every model may take together (warm
    swaps, ``modelyard.engines.llamacpp.warm``); 0: no state is saved or restored."""
    command: tuple[str, ...] = ()
    """Command engine: the program and its arguments, with ``{port}``-style placeholders
    (``modelyard.engines.command.runner``)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Command engine: environment variables added to ours."""
    health: str = "/health"
    """Command engine: the path polled until it answers ``health_status``."""
    metrics: str | None = None
    """Command engine: the path of its Prometheus metrics, merged into the gateway's
    ``/metrics`` with a ``model`` label while it runs; ``None``: not scraped."""
    health_status: int = 200
    ready_timeout: float = 600.0
    """Command engine: seconds the server may take to become healthy."""
    stop_signal: str = "SIGTERM"
    """Command engine: the signal that asks the server to stop (then SIGKILL)."""
    stop_timeout: float | None = None
    """Command engine: seconds between ``stop_signal`` and SIGKILL; ``None``: the server's
    ``stop_grace``."""
    upstream_model: str | None = None
    """The model name the engine expects: requests' ``model`` is rewritten to it."""
    served: tuple[str, ...] = ()
    """What it serves, where its engine says (``capabilities``); empty: what ``kind``
    implies."""
    url: str | None = None
    """Remote engine: the server's root URL (requests go to ``url + /v1/...``)."""
    api_key_env: str | None = None
    """Remote engine: the environment variable that holds its key."""
    price: float = 1.0
    """What a token costs from a token balance (prompt and completion alike)."""
    replicas: int = 1
    """Runners of the model started together when it is wanted."""
    max_replicas: int = 1
    """Runners it may grow to (from ``replicas``) while requests wait ``scale_up_wait``."""
    gpus_per_replica: int | None = None
    """Each runner gets GPUs of its own: runner N takes ``gpus[N * k : (N + 1) * k]`` for
    this ``k``; ``None``: every runner uses all of ``gpus``."""
    nodes: tuple[str, ...] = ()
    """In a cluster, the nodes its runners may run on; empty: any."""
    scale_up_wait: float = 2.0
    """Seconds the oldest waiting request waits, every runner busy, before one more starts."""
    sleep_level: int = 0
    """Command engine: vLLM's sleep mode. An idle runner gives back its GPU memory by
    sleeping at this level (1: weights kept in RAM; 2: dropped) instead of being stopped,
    and the next request wakes it; 0: off."""
    options: Any = None
    """An engine's own settings that have no field here, as its table validated them (an
    engine from another package keeps its keys here)."""
    replica: int = 0
    """Which runner of the model this is (0 … ``max_replicas`` - 1): set by the scheduler
    on the settings a runner is started with, for its log file and its name."""

    @property
    def runner_name(self) -> str:
        """The model's name, with ``@N`` for a replica after the first (``qwen@1``): its
        log file is named by it."""
        return f"{self.name}@{self.replica}" if self.replica else self.name

    @functools.cached_property
    def prompt_cache_bytes(self) -> int:
        """The prompt cache a llama.cpp runner is given and counted for: the configured size,
        else ``PROMPT_CACHE_SHARE`` of the weight files (from one ``stat`` of each, once).
        Left to itself llama.cpp keeps up to 8 GiB per model, beyond any estimate."""
        if self.prompt_cache is not None:
            return self.prompt_cache
        try:
            weights = sum(p.stat().st_size for p in self.files)
        except OSError:
            weights = 0
        share = int(weights * PROMPT_CACHE_SHARE)
        return min(max(share, PROMPT_CACHE_MIN), PROMPT_CACHE_MAX) // 1024**2 * 1024**2

    @property
    def files(self) -> tuple[Path, ...]:
        return self.shards or (self.path,)

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The endpoints the model serves: ``chat``, ``completion``, ``embedding``, ``rerank``."""
        if self.served:
            return self.served
        if self.kind == "chat":
            return ("chat", "completion")
        return (self.kind,)

    @functools.cached_property
    def settings_key(self) -> str:
        """Identifies the settings that change a model's footprint, to remember measurements."""
        settings = {
            "files": [str(p) for p in self.files],
            "ctx": self.ctx,
            "parallel": self.parallel,
            "gpu_layers": self.gpu_layers,
            "gpus": list(self.gpus),
            "mmproj": str(self.mmproj) if self.mmproj else None,
            "extra_args": list(self.extra_args),
            "engine": self.engine,
            "llama_server": str(self.llama_server) if self.llama_server else None,
            "backend": self.backend,
            "max_batch_tokens": self.max_batch_tokens,
            "prompt_cache": self.prompt_cache,
            "command": list(self.command),
            "url": self.url,
        }
        if self.options is not None:  # absent otherwise: the keys measured before stay
            settings["options"] = repr(self.options)
        blob = json.dumps(settings, sort_keys=True).encode()
        return f"{self.name}:{hashlib.sha256(blob).hexdigest()[:16]}"


def default(name: str) -> Any:
    """The default of a ``ModelSpec`` field: the one place each model default is written
    (the config schema and the workers' command lines take theirs from here)."""
    (spec_field,) = [f for f in fields(ModelSpec) if f.name == name]
    if spec_field.default is not MISSING:
        return spec_field.default
    assert spec_field.default_factory is not MISSING, name
    return spec_field.default_factory()


def encoder_serves(kind: ModelKind) -> tuple[str, ...]:
    """What an encoder model serves: an embedding model reranks too (by cosine similarity)."""
    return ("embedding", "rerank") if kind == "embedding" else (kind,)
