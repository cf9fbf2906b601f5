"""The engine seam: what the API may ask an engine, answered as a plain OpenAI-compatible
server (vLLM, SGLang, TEI, any ``command``) would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.catalog.engine import CatalogEngine
from modelyard.catalog.spec import ModelSpec
from modelyard.dialect.base import Dialect
from modelyard.logbook import Rotation
from modelyard.protocol.openai import ChatCompletionRequest, CompletionRequest
from modelyard.runners.base import Runner
from modelyard.runners.gpu import Gpus

Shape = Callable[[bytes], bytes]
"""Reshapes a whole answer before it goes to the client."""


class Engine(CatalogEngine):
    """An engine: its config table and catalog entries (``CatalogEngine``), its runner, what
    it can do, and how a request is shaped for it. The defaults are a plain OpenAI-compatible
    server's: requests pass as the client sent them."""

    def runner(self, home: Path, rotation: Rotation, gpus: Gpus | None) -> Runner:
        """Its runner, logging under ``<home>/logs``; ``gpus`` measures what its processes
        hold on the GPUs."""
        raise NotImplementedError

    def forget(self, spec: ModelSpec, home: Path) -> list[Path]:
        """Deletes what it keeps of a model whose files are being deleted (under ``home``);
        the paths deleted. Called in a thread."""
        return []

    tokenize = False
    """It counts a prompt's tokens (``/tokenize``): Anthropic's ``count_tokens``."""
    gathers = False
    """It streams with per-token timings, and a whole answer is asked of it as a stream and
    gathered (``api.gather``): an answer whose client leaves is stopped and charged."""
    sized = False
    """Its context is the one the catalog gave it, so that is the length limit of a request
    that set none (others are sent no limit the request did not set: vLLM refuses one past
    what its context has left)."""
    checks_dimensions = False
    """It checks an embedding request's ``dimensions`` against the model itself (else a
    model not trained to be shortened, ``matryoshka``, refuses them here)."""
    truncates = False
    """It takes a rerank request's ``truncate``."""
    relays = False
    """Its answers pass as they come (a server of someone else's, with no process of ours to
    wait for when it is out of reach)."""

    def calls_tools(self, spec: ModelSpec) -> bool:
        """It can call the tools a chat request offers."""
        return True

    def reads_media(self, spec: ModelSpec) -> bool:
        """It can read the images or audio of a chat request."""
        return True

    def metrics_path(self, spec: ModelSpec) -> str | None:
        """The path of its Prometheus metrics, merged into the gateway's; ``None``: none."""
        return spec.metrics

    def adapt_chat(
        self,
        spec: ModelSpec,
        parsed: ChatCompletionRequest,
        payload: dict[str, Any],
        dialect: Dialect | None,
    ) -> Dialect | None:
        """Shapes a chat request's ``payload`` for it (or refuses what it cannot do); the
        dialect its answer is spoken in (``dialect``, or one that wraps it)."""
        return dialect

    def adapt_completion(
        self, parsed: CompletionRequest, payload: dict[str, Any]
    ) -> Dialect | None:
        """Shapes a legacy completion's ``payload`` for it; the dialect that gives its answer
        the legacy shape it lacks, if any."""
        return None

    def adapt_embedding(
        self, dimensions: int | None, encoding_format: str, payload: dict[str, Any]
    ) -> Shape | None:
        """Shapes an embedding request's ``payload`` for it; what reshapes its answer, if
        anything."""
        return None
