"""OpenAI request and response shapes, named as in the OpenAI API reference.

Requests allow extra fields: engines take more than OpenAI defines (llama.cpp's ``grammar``,
``json_schema``, ``n_probs``, ``cache_prompt`` …) and the gateway passes them on untouched.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionMessageParam(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class _SamplingRequest(_Request):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | int | None = None
    user: str | None = None
    keep_alive: str | float | None = None
    """Ollama's: how long the model stays loaded after this request (``"5m"``, ``0``, ``-1``)."""


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatCompletionMessageParam] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None


class ModelLoadRequest(_Request):
    model: str = Field(min_length=1)
    keep_alive: str | float | None = None


class ModelUnloadRequest(_Request):
    model: str = Field(min_length=1)


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorObject


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "modelyard"
    kind: str
    state: str
    aliases: list[str] = Field(default_factory=list)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
