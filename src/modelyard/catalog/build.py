"""The catalog from a config file's model tables, discovered files and the demo models.

``entry_spec`` turns one validated ``[models.NAME]`` table into a ``ModelSpec``: it finds the
engine the entry runs on, checks the engine's keys against that engine's table
(``modelyard.catalog.engine``) and lets the engine resolve the rest against the files it
names; ``merge`` puts explicit entries before discovered models, and ``check_names`` refuses
a name or alias that two models claim. Every problem is a ``ConfigError`` naming the file,
the table and the key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelyard.catalog.engine import Place, choose, engine_named, validate
from modelyard.catalog.entry import ModelEntry
from modelyard.catalog.hf import is_hf_dir, read_hf_dir
from modelyard.catalog.spec import ModelKind, ModelSpec
from modelyard.errors import ConfigError

log = logging.getLogger(__name__)

_SHARED = (
    "ctx",
    "threads",
    "pinned",
    "preload",
    "max_queue",
    "queue_timeout",
    "memory",
    "gpu_memory",
    "upstream_model",
    "matryoshka",
    "price",
    "replicas",
    "scale_up_wait",
    "gpus_per_replica",
)
"""Shared entry keys that reach the spec as they are (validated and parsed by the schema)."""


def resolve(value: str, base_dir: Path) -> Path:
    return Place("", base_dir).resolve(value)


def entry_spec(
    name: str,
    entry: ModelEntry,
    base_dir: Path,
    origin: str,
    keep_alive: float | None,
    server: Mapping[str, Any] | None = None,
) -> ModelSpec:
    """A ``[models.NAME]`` table, validated, resolved against the files it names by the
    engine it runs on."""
    place = Place(f"{origin}: [models.{name}]", base_dir, server or {})
    flat = dict(entry.model_extra or {})
    named = entry.engine
    table = dict(flat)
    if isinstance(named, dict):
        own = dict(named)
        named = own.pop("name", None)
        if not isinstance(named, str):
            raise place.error("engine.name", "required: the engine this table is for")
        twice = sorted(own.keys() & table.keys())
        if twice:
            raise place.error(twice[0], f"given twice, flat and in [models.{name}.engine]")
        table.update(own)
    path = place.resolve(entry.path) if entry.path else None
    chosen = choose(named, table, path, place.where)
    engine = engine_named(chosen)
    options = validate(chosen, table, set(flat), place.where)
    max_replicas = entry.max_replicas or entry.replicas
    if max_replicas < entry.replicas:
        raise place.error(
            "max_replicas", f"at least replicas ({entry.replicas}), not {max_replicas}"
        )
    share = entry.gpus_per_replica
    if share is not None and len(set(entry.gpus)) < share * max_replicas:
        raise place.error(
            "gpus_per_replica",
            f"{max_replicas} runner(s) of {share} GPU(s) each need {share * max_replicas} "
            f"in gpus, which lists {len(set(entry.gpus))}",
        )
    set_keys = entry.model_fields_set
    spec = ModelSpec(
        name=name,
        path=Path(),
        kind=entry.kind or _kind_of(tuple(entry.capabilities)),
        engine=chosen,
        aliases=tuple(entry.aliases),
        parallel=entry.parallel if "parallel" in set_keys else engine.parallel,
        defaults=dict(entry.defaults),
        keep_alive=entry.keep_alive if "keep_alive" in set_keys else keep_alive,
        gpus=tuple(dict.fromkeys(entry.gpus)),
        nodes=tuple(dict.fromkeys(entry.nodes)),
        max_replicas=max_replicas,
        **{key: getattr(entry, key) for key in _SHARED},
    )
    return engine.resolve(spec, entry, options, place)


def served(entry: ModelEntry, kind: ModelKind) -> tuple[str, ...]:
    """What an engine that serves what it is told serves: the entry's ``capabilities``, else
    what its kind implies."""
    return tuple(dict.fromkeys(entry.capabilities)) or (
        ("chat", "completion") if kind == "chat" else (kind,)
    )


def _kind_of(served: tuple[str, ...]) -> ModelKind:
    if not served or "chat" in served or "completion" in served:
        return "chat"
    return "embedding" if "embedding" in served else "rerank"


def encoder_kind(path: Path, kind: ModelKind | None, where: str) -> ModelKind:
    """The kind of a model directory for the encoder engine: as configured, or from its files."""
    if not path.is_dir() or not is_hf_dir(path):
        raise ConfigError(
            f"{where} path: the encoder engine needs a model directory with config.json "
            f"or modules.json: {path}"
        )
    try:
        info = read_hf_dir(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where} path: cannot read {path}: {exc}") from None
    if kind == "chat" or (kind is None and info.kind is None):
        what = f"{info.why}" if info.kind is None else "a chat model"
        raise ConfigError(
            f"{where} kind: the encoder engine serves embedding and rerank models, not {what}"
        )
    return kind or info.kind or "embedding"


def merge(
    explicit: Sequence[ModelSpec], found: Sequence[ModelSpec], demo: Sequence[ModelSpec] = ()
) -> list[ModelSpec]:
    """Explicit entries, then the demo models, then the discovered ones. An entry wins over a
    discovered model with the same name or the same file (the file is served once, by the
    entry), and over a demo model with the same name (an entry of the demo's file is one more
    model: the demo stays). Entries keep their aliases: a demo or discovered model loses an
    alias (a pulled name, ``demo``) an entry uses."""
    names = {spec.name for spec in explicit}
    taken = names | {alias for spec in explicit for alias in spec.aliases}
    files = {spec.path: spec.name for spec in explicit}
    kept = [s for s in demo if s.name not in names]
    for spec in found:
        if spec.name not in names and spec.path in files:
            log.info(
                "%s is served as the entry %r, which names its file", spec.path, files[spec.path]
            )
    kept += [s for s in found if s.name not in names and s.path not in files]
    return [*explicit] + [
        replace(s, aliases=tuple(a for a in s.aliases if a not in taken)) for s in kept
    ]


def check_names(models: list[ModelSpec], origin: str) -> None:
    seen: dict[str, str] = {}
    for spec in models:
        for name in (spec.name, *spec.aliases):
            if name in seen and seen[name] != spec.name:
                raise ConfigError(
                    f"{origin}: [models.{spec.name}] aliases: {name!r} already names "
                    f"model {seen[name]!r}"
                )
            seen[name] = spec.name
