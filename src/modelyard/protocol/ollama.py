"""Ollama's request shapes (``/api/chat``, ``/api/generate``, ``/api/embed``…), as its API
documentation names them. Older clients send ``name`` where newer ones send ``model``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from modelyard.protocol.openai import KeepAlive, Named, _Request


class OllamaToolCall(_Request):
    function: dict[str, Any]


class OllamaMessage(_Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    images: list[str] | None = None
    """Base64 image data (or ``data:`` URLs)."""
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class _Generation(Named):
    format: str | dict[str, Any] | None = None
    """``"json"`` or a JSON schema the answer must follow."""
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    think: bool | Literal["low", "medium", "high"] | None = None


class OllamaChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list)
    """Empty: load the model (``keep_alive: 0``: unload it)."""
    tools: list[dict[str, Any]] | None = None


class OllamaGenerateRequest(_Generation):
    prompt: str = ""
    """Empty: load the model (``keep_alive: 0``: unload it)."""
    system: str | None = None
    images: list[str] | None = None
    raw: bool = False
    """The prompt as it is, no chat template."""
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None


class OllamaEmbedRequest(Named):
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class OllamaEmbeddingsRequest(Named):
    """The older ``/api/embeddings``: one prompt, one vector."""

    prompt: str
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
