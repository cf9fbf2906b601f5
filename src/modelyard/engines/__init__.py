"""What each engine can do and how a request is adapted to it.

``engine_of(spec)`` is the engine a catalog entry runs on. The API asks it (can it count
tokens, call tools, read images; how is a request shaped for it) and never tests an
engine's name: an engine's knowledge lives in its module here, beside its runner in
``runners/``.
"""

from __future__ import annotations

from modelyard.catalog.spec import ModelSpec
from modelyard.engines.base import Engine, Shape
from modelyard.engines.encoder import Encoder
from modelyard.engines.llamacpp import LlamaCpp
from modelyard.engines.remote import Remote

ENGINES: dict[str, Engine] = {
    "llamacpp": LlamaCpp(),
    "encoder": Encoder(),
    "command": Engine(),
    "remote": Remote(),
}
"""By the name a catalog entry gives in ``engine``; ``command`` is a plain OpenAI-compatible
server."""


def engine_of(spec: ModelSpec) -> Engine:
    return ENGINES[spec.engine]


__all__ = ["ENGINES", "Engine", "Shape", "engine_of"]
