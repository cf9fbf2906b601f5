"""llama.cpp's server (the ``xllamacpp`` wheel or a ``llama-server`` binary): what it can do
and how an OpenAI request is shaped for it."""

from __future__ import annotations

import array
import base64
import json
import math
from pathlib import Path
from typing import Any

from modelyard.catalog.spec import ModelSpec
from modelyard.catalog.template import can_call_tools
from modelyard.dialect.base import Dialect
from modelyard.dialect.forced import ForcedCall, forced, hold_to_call
from modelyard.dialect.legacy import LegacyCompletion
from modelyard.engines.base import Engine, Shape
from modelyard.engines.llamacpp.kvstore import KvStore, identity, warm_swaps
from modelyard.engines.llamacpp.table import LlamaCppEntry
from modelyard.errors import InvalidRequestError, RunnerError, UnsupportedFeatureError
from modelyard.logbook import Rotation
from modelyard.protocol.openai import ChatCompletionRequest, CompletionRequest
from modelyard.runners.base import Runner
from modelyard.runners.gpu import Gpus


class LlamaCpp(LlamaCppEntry, Engine):
    tokenize = True
    gathers = True
    sized = True

    def runner(self, home: Path, rotation: Rotation, gpus: Gpus | None) -> Runner:
        from modelyard.engines.llamacpp.runner import LlamaCppRunner  # not to read a config

        return LlamaCppRunner(home / "logs", rotation=rotation, gpus=gpus)

    def forget(self, spec: ModelSpec, home: Path) -> list[Path]:
        """Its saved conversations (warm swaps)."""
        store = KvStore(home / "kv")
        return [store.root / store.file_name(saved) for saved in store.forget(spec.path)]

    def kept(self, spec: ModelSpec, home: Path) -> dict[str, Any] | None:
        """Its warm swaps: on or off (and why), and the conversations saved for it."""
        if not warm_swaps(spec):
            return {"on": False, "why": "kv_cache_disk = 0"} if spec.kind == "chat" else None
        store = KvStore(home / "kv")
        try:
            ident = identity(spec)
        except OSError:
            return None
        states = store.states(ident)
        kept: dict[str, Any] = {
            "on": store.reuses(ident) is not False,
            "states": len(states),
            "tokens": sum(s.tokens for s in states),
            "bytes": sum(s.bytes for s in states),
        }
        if not kept["on"]:
            kept["why"] = "a restore spared no prompt reading on this model"
        return kept

    def calls_tools(self, spec: ModelSpec) -> bool:
        return can_call_tools(spec)

    def reads_media(self, spec: ModelSpec) -> bool:
        return spec.mmproj is not None

    def metrics_path(self, spec: ModelSpec) -> str | None:
        return "/metrics"

    def adapt_chat(
        self,
        spec: ModelSpec,
        parsed: ChatCompletionRequest,
        payload: dict[str, Any],
        dialect: Dialect | None,
    ) -> Dialect | None:
        """Refuses media without a projector and tools without a Jinja template by name;
        a named ``tool_choice`` becomes ``required`` of that tool alone; a forced call is
        held to a call (``dialect.forced``)."""
        if not self.reads_media(spec) and parsed.has_media():
            raise UnsupportedFeatureError(
                f"Model {spec.name!r} cannot read images or audio: it has no multimodal "
                "projector. Send text only, or give the model an mmproj file (mmproj in its "
                "catalog entry)",
                param="messages",
            )
        if isinstance(parsed.tool_choice, dict):
            _name_the_tool(payload, parsed.tool_choice)
        if parsed.tools and not self.calls_tools(spec):
            raise UnsupportedFeatureError(
                f"Model {spec.name!r} uses llama.cpp's built-in {spec.chat_template!r} chat "
                "format, which cannot call tools. Give it a Jinja chat template (chat_template "
                "= a .jinja file, or none to use the one in the GGUF), or send the request "
                "without tools",
                param="tools",
            )
        if forced(payload) and hold_to_call(payload):
            usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            return ForcedCall(dialect or Dialect(parsed.model), usage)
        return dialect

    def adapt_completion(
        self, parsed: CompletionRequest, payload: dict[str, Any]
    ) -> Dialect | None:
        return _legacy_completion(parsed, payload)

    def adapt_embedding(
        self, dimensions: int | None, encoding_format: str, payload: dict[str, Any]
    ) -> Shape | None:
        """llama.cpp neither shortens vectors nor knows our ``truncate``: vectors are
        shortened here."""
        for key in ("dimensions", "truncate"):
            payload.pop(key, None)
        if dimensions is None:
            return None
        payload["encoding_format"] = "float"
        return _shortener(dimensions, encoding_format)


def _legacy_completion(parsed: CompletionRequest, payload: dict[str, Any]) -> Dialect | None:
    """What llama.cpp cannot do of a legacy completion is refused by name; logprobs and
    ``echo`` are given OpenAI's legacy shape (``LegacyCompletion``)."""
    if parsed.suffix:
        raise UnsupportedFeatureError(
            "suffix (fill in the middle) is not supported by llama.cpp's completions: send the "
            "text before the gap as the prompt",
            param="suffix",
        )
    if parsed.best_of is not None and parsed.best_of != (parsed.n or 1):
        raise UnsupportedFeatureError(
            "best_of is not supported: ask for n completions and choose among them",
            param="best_of",
        )
    payload.pop("best_of", None)
    echo = payload.pop("echo", None)
    if echo and parsed.logprobs:
        raise UnsupportedFeatureError(
            "echo with logprobs needs the prompt's log probabilities, which llama.cpp does not "
            "give: send one of them",
            param="echo",
        )
    if echo and not isinstance(parsed.prompt, str):
        raise UnsupportedFeatureError(
            "echo works with a text prompt only, not tokens or a list", param="echo"
        )
    if not echo and not parsed.logprobs:
        return None
    prompt = parsed.prompt if echo and isinstance(parsed.prompt, str) else None
    usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
    return LegacyCompletion(parsed.model, prompt, usage)


def _name_the_tool(payload: dict[str, Any], choice: dict[str, Any]) -> None:
    """A named ``tool_choice`` for llama.cpp, which takes only ``auto``, ``none`` and
    ``required``: that tool is required, and the only one offered."""
    name = (choice.get("function") or {}).get("name")
    tools = [
        tool
        for tool in payload.get("tools") or []
        if isinstance(tool, dict) and (tool.get("function") or {}).get("name") == name
    ]
    if not tools:
        raise InvalidRequestError(
            f"tool_choice names the function {name!r}, which is not among the tools",
            param="tool_choice",
        )
    payload["tools"] = tools
    payload["tool_choice"] = "required"


def _shortener(dimensions: int, encoding_format: str) -> Shape:
    """Cuts float vectors to ``dimensions`` and scales them back to unit length."""

    def shape(answer: bytes) -> bytes:
        try:
            data = json.loads(answer)
            vectors = [[float(x) for x in item["embedding"]] for item in data["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise RunnerError(f"model server sent malformed embeddings: {exc}") from exc
        for item, full in zip(data["data"], vectors, strict=True):
            vector = full[:dimensions]
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            vector = [x / norm for x in vector]
            if encoding_format == "base64":
                item["embedding"] = base64.b64encode(array.array("f", vector).tobytes()).decode()
            else:
                item["embedding"] = vector
        return json.dumps(data).encode()

    return shape
