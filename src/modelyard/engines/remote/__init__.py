"""A server already running at a URL: no process of ours."""

from __future__ import annotations

from pathlib import Path

from modelyard.engines.base import Engine
from modelyard.engines.remote.table import RemoteEntry
from modelyard.logbook import Rotation
from modelyard.runners.base import Runner
from modelyard.runners.gpu import Gpus


class Remote(RemoteEntry, Engine):
    relays = True

    def runner(self, home: Path, rotation: Rotation, gpus: Gpus | None) -> Runner:
        from modelyard.engines.remote.runner import RemoteRunner  # not to read a config

        return RemoteRunner()
