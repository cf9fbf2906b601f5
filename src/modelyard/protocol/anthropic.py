"""Anthropic's Messages API request shapes (``/v1/messages``, ``/v1/messages/count_tokens``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from modelyard.protocol.openai import MAX_TOKENS, Count, KeepAlive, ModelName, _Request


class AnthropicMessage(_Request):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class CountTokensRequest(_Request):
    model: ModelName
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: Count = Field(ge=1, le=MAX_TOKENS)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
