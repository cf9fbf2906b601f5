"""The engines: each one's package owns its config table and catalog entries, its runner
(how its server is started, watched and estimated), what it can do and how a request is
shaped for it.

Engines are plugins, found by name in the catalog's registry (``modelyard.catalog.engine``:
the ``modelyard.engines`` entry points, and any ``register``ed at run time).
``engine_of(spec)`` is the engine a catalog entry runs on. The API asks it (can it count
tokens, call tools, read images; how is a request shaped for it) and never tests an
engine's name; ``default_runners`` gives the scheduler every engine's runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from modelyard.catalog.engine import engine_named, names, register, unregister
from modelyard.catalog.spec import ModelSpec
from modelyard.engines.base import Engine, Shape
from modelyard.logbook import DEFAULT_ROTATION, Rotation
from modelyard.runners.base import Runner
from modelyard.runners.gpu import Gpus


def engine_of(spec: ModelSpec) -> Engine:
    return cast(Engine, engine_named(spec.engine))


def engines() -> dict[str, Engine]:
    """Every engine, by the name a catalog entry gives in ``engine``."""
    return {name: cast(Engine, engine_named(name)) for name in names()}


def default_runners(
    home: Path, rotation: Rotation = DEFAULT_ROTATION, gpus: Gpus | None = None
) -> dict[str, Runner]:
    """One runner per engine, logging under ``<home>/logs``; ``gpus`` measures what their
    processes hold on the GPUs."""
    return {name: engine.runner(home, rotation, gpus) for name, engine in engines().items()}


__all__ = [
    "Engine",
    "Shape",
    "default_runners",
    "engine_of",
    "engines",
    "register",
    "unregister",
]
