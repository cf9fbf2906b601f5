"""A fifth engine from outside modelyard: the canned responder (``bench/responder.py``) as an
OpenAI-compatible server, with a config table and a capability set of its own.

It is written against the engine seam only (``modelyard.engines.Engine`` and the catalog's
``Table``); registering it (``modelyard.engines.register``) is all it takes to serve models
on it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field

from modelyard.catalog.engine import Place, Table
from modelyard.catalog.entry import ModelEntry
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.dialect.base import Dialect
from modelyard.engines import Engine
from modelyard.engines.command.runner import CommandRunner
from modelyard.errors import UnsupportedFeatureError
from modelyard.logbook import Rotation
from modelyard.protocol.openai import ChatCompletionRequest
from modelyard.runners.base import Runner, RunningModel
from modelyard.runners.gpu import Gpus
from tests.fake import RESPONDER


class ToyTable(Table):
    words: int = Field(default=7, gt=0, le=7)
    """Tokens in each answer (the responder's ``--chunks``)."""
    pace_ms: float = Field(default=0.0, ge=0, le=1000)
    """Between two tokens."""


class ToyRunner:
    """Runs the responder with the toy's settings, as the command engine runs any program."""

    def __init__(self, log_dir: Path, rotation: Rotation) -> None:
        self._commands = CommandRunner(log_dir, rotation=rotation)

    def estimate(self, spec: ModelSpec) -> Footprint:
        return {"ram": 64 * 1024**2}

    async def start(self, spec: ModelSpec) -> RunningModel:
        table: ToyTable = spec.options
        command = (sys.executable, str(RESPONDER), "--port", "{port}", "--api-key", "{key}")
        command += ("--chunks", str(table.words), "--delay-ms", str(table.pace_ms))
        return await self._commands.start(replace(spec, command=command))


class Toy(Engine):
    name = "toy"
    Table = ToyTable
    parallel = 2

    def resolve(
        self, spec: ModelSpec, entry: ModelEntry, table: ToyTable, place: Place
    ) -> ModelSpec:
        if entry.path:
            raise place.error("path", "not for a toy model (it needs no files)")
        return replace(spec, kind="chat", served=("chat",), options=table, ready_timeout=20.0)

    def settings(self, spec: ModelSpec) -> dict[str, Any]:
        return {"words": spec.options.words, "pace_ms": spec.options.pace_ms}

    def runner(self, home: Path, rotation: Rotation, gpus: Gpus | None) -> Runner:
        return ToyRunner(home / "logs", rotation)

    def calls_tools(self, spec: ModelSpec) -> bool:
        return False

    def adapt_chat(
        self,
        spec: ModelSpec,
        parsed: ChatCompletionRequest,
        payload: dict[str, Any],
        dialect: Dialect | None,
    ) -> Dialect | None:
        if parsed.tools:
            raise UnsupportedFeatureError("a toy calls no tools", param="tools")
        return dialect

    def abilities(self, spec: ModelSpec, template: str) -> set[str]:
        return set()
