"""Our encoder worker (sentence-transformers embeddings and cross-encoder rerank)."""

from __future__ import annotations

from pathlib import Path

from modelyard.catalog.spec import ModelSpec
from modelyard.engines.base import Engine
from modelyard.engines.encoder.table import EncoderEntry
from modelyard.logbook import Rotation
from modelyard.runners.base import Runner
from modelyard.runners.gpu import Gpus


class Encoder(EncoderEntry, Engine):
    checks_dimensions = True  # it knows the model's width
    truncates = True

    def runner(self, home: Path, rotation: Rotation, gpus: Gpus | None) -> Runner:
        from modelyard.engines.encoder.runner import EncoderRunner  # not to read a config

        return EncoderRunner(home / "logs", home / "cache", rotation=rotation)

    def estimate_parts(self, spec: ModelSpec) -> dict[str, int]:
        from modelyard.engines.encoder.runner import footprint_parts

        return footprint_parts(spec)
