"""How to start, watch and stop one model's server process."""

from __future__ import annotations

from pathlib import Path

from modelyard.runners.base import Runner
from modelyard.runners.encoder import EncoderRunner
from modelyard.runners.llamacpp import LlamaCppRunner


def default_runners(home: Path) -> dict[str, Runner]:
    """One runner per engine, logging under ``<home>/logs``."""
    return {
        "llamacpp": LlamaCppRunner(home / "logs"),
        "encoder": EncoderRunner(home / "logs", home / "cache"),
    }
