"""How to start, watch and stop one model's server process."""

from __future__ import annotations

from pathlib import Path

from modelyard.logbook import DEFAULT_ROTATION, Rotation
from modelyard.runners.base import Runner
from modelyard.runners.command import CommandRunner
from modelyard.runners.encoder import EncoderRunner
from modelyard.runners.gpu import Gpus
from modelyard.runners.llamacpp import LlamaCppRunner
from modelyard.runners.remote import RemoteRunner


def default_runners(
    home: Path, rotation: Rotation = DEFAULT_ROTATION, gpus: Gpus | None = None
) -> dict[str, Runner]:
    """One runner per engine, logging under ``<home>/logs``; ``gpus`` measures what their
    processes hold on the GPUs."""
    return {
        "llamacpp": LlamaCppRunner(home / "logs", rotation=rotation, gpus=gpus),
        "encoder": EncoderRunner(home / "logs", home / "cache", rotation=rotation),
        "command": CommandRunner(home / "logs", rotation=rotation, gpus=gpus),
        "remote": RemoteRunner(),
    }
