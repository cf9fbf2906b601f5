"""The engines: each one's package owns its runner (how its server is started, watched and
estimated), what it can do and how a request is shaped for it.

``engine_of(spec)`` is the engine a catalog entry runs on. The API asks it (can it count
tokens, call tools, read images; how is a request shaped for it) and never tests an
engine's name; ``default_runners`` gives the scheduler every engine's runner.
"""

from __future__ import annotations

from pathlib import Path

from modelyard.catalog.spec import ModelSpec
from modelyard.engines.base import Engine, Shape
from modelyard.engines.command import Command
from modelyard.engines.encoder import Encoder
from modelyard.engines.llamacpp import LlamaCpp
from modelyard.engines.remote import Remote
from modelyard.logbook import DEFAULT_ROTATION, Rotation
from modelyard.runners.base import Runner
from modelyard.runners.gpu import Gpus

ENGINES: dict[str, Engine] = {
    "llamacpp": LlamaCpp(),
    "encoder": Encoder(),
    "command": Command(),
    "remote": Remote(),
}
"""By the name a catalog entry gives in ``engine``."""


def engine_of(spec: ModelSpec) -> Engine:
    return ENGINES[spec.engine]


def default_runners(
    home: Path, rotation: Rotation = DEFAULT_ROTATION, gpus: Gpus | None = None
) -> dict[str, Runner]:
    """One runner per engine, logging under ``<home>/logs``; ``gpus`` measures what their
    processes hold on the GPUs."""
    return {name: engine.runner(home, rotation, gpus) for name, engine in ENGINES.items()}


__all__ = ["ENGINES", "Engine", "Shape", "default_runners", "engine_of"]
