"""Any OpenAI-compatible server run as a command (vLLM, SGLang, TEI, Infinity, …)."""

from __future__ import annotations

from pathlib import Path

from modelyard.engines.base import Engine
from modelyard.engines.command.table import CommandEntry
from modelyard.logbook import Rotation
from modelyard.runners.base import Runner
from modelyard.runners.gpu import Gpus


class Command(CommandEntry, Engine):
    """A plain OpenAI-compatible server: the seam's defaults."""

    def runner(self, home: Path, rotation: Rotation, gpus: Gpus | None) -> Runner:
        from modelyard.engines.command.runner import CommandRunner  # not to read a config

        return CommandRunner(home / "logs", rotation=rotation, gpus=gpus)
