"""A ``[models.NAME]`` table as ``modelyard.toml`` gives it, and the value types of the
config file (durations, sizes) that every table shares."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from modelyard.catalog.spec import default
from modelyard.quantity import parse_duration, parse_seconds, parse_size

Scalar = str | int | float | bool


def _checked(parse: Any) -> Any:
    """``parse`` for a pydantic ``BeforeValidator``: anything but a string or number is a
    ValueError (so it is reported as a config error, never raised as something else)."""

    def validate(value: object) -> object:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"expected a number or a string, got {type(value).__name__}")
        return parse(value)

    return validate


Duration = Annotated[float | None, BeforeValidator(_checked(parse_duration))]
"""Seconds, parsed once here; ``None`` is forever (``-1``, or a century and more)."""
Seconds = Annotated[float, BeforeValidator(_checked(parse_seconds))]
"""Seconds that must end."""
Size = Annotated[int, BeforeValidator(_checked(parse_size))]
"""Bytes, parsed once here."""


class ModelEntry(BaseModel):
    """One ``[models.NAME]`` table (``modelyard.catalog.build.entry_spec`` resolves it): the
    keys every engine shares. The engine's own keys come in its table, ``[models.NAME.engine]``
    with ``name``, or flat beside these (kept in ``model_extra``, checked by the engine)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    path: str | None = None
    kind: Literal["chat", "embedding", "rerank"] | None = None
    """Default: ``chat`` for a GGUF file, read from the files of a model directory."""
    engine: str | dict[str, Any] | None = None
    """An engine's name, or its table with ``name``. Default: ``llamacpp`` for a GGUF file,
    ``encoder`` for a model directory, ``command`` when there is a ``command``, ``remote``
    when there is a ``url``."""
    aliases: list[str] = Field(default_factory=list)
    ctx: int = Field(default=default("ctx"), gt=0)
    parallel: int = Field(default=default("parallel"), gt=0, le=256)
    """Unset: the engine's ``parallel``."""
    threads: int | None = Field(default=None, gt=0)
    gpus: list[Annotated[int, Field(ge=0, le=63)]] = Field(default_factory=list, max_length=64)
    """GPUs (NVML's numbers) the runner may use: its ``CUDA_VISIBLE_DEVICES`` and ``{gpu}``.
    Unset: GPU 0 when ``gpu_layers`` puts layers there, else none."""
    defaults: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    keep_alive: Duration = None
    """Unset: the server's ``keep_alive``."""
    pinned: bool = False
    preload: bool = False
    max_queue: int = Field(default=default("max_queue"), ge=0)
    queue_timeout: Duration = default("queue_timeout")
    memory: Size | None = None
    gpu_memory: Size | None = None
    """GPU memory the model takes (on each of its ``gpus``), overriding the estimate."""
    upstream_model: str | None = Field(default=None, min_length=1, max_length=512)
    matryoshka: bool = False
    """An embedding model trained to be cut short: requests may ask for ``dimensions``."""
    capabilities: list[Literal["chat", "completion", "embedding", "rerank"]] = Field(
        default_factory=list
    )
    price: float = Field(default=default("price"), ge=0, le=1_000_000)
    """Charged per token (prompt and completion) from a key's or user's token balance."""
    replicas: int = Field(default=default("replicas"), ge=1, le=64)
    """Runners of the model started when it is wanted; requests go to the least busy."""
    max_replicas: int | None = Field(default=None, ge=1, le=64)
    """Grow to this many runners while requests wait (unset: ``replicas``)."""
    gpus_per_replica: int | None = Field(default=None, ge=1, le=64)
    """Each runner of the model gets this many of ``gpus`` of its own (runner 0 the first,
    runner 1 the next …); unset: every runner uses all of ``gpus``."""
    nodes: list[Annotated[str, StringConstraints(min_length=1, max_length=255)]] = Field(
        default_factory=list, max_length=256
    )
    """In a cluster, the nodes its runners may run on (``local``: the gateway's machine);
    empty: any."""
    scale_up_wait: Seconds = default("scale_up_wait")
    """How long the oldest request waits, every runner busy, before one more starts."""
