"""OpenAI request and response shapes, named as in the OpenAI API reference.

Requests allow extra fields: engines take more than OpenAI defines (llama.cpp's ``grammar``,
``json_schema``, ``n_probs``, ``cache_prompt`` …) and the gateway passes them on untouched.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_TOKENS = 2**31 - 1
"""Engines count tokens in 32 bits; a larger ``max_tokens`` wrapped to a negative number."""
MAX_NAME = 512
"""Longest model name or reference (Hugging Face allows 96 characters per part)."""
MAX_LOGIT_BIAS = 1024
MAX_CHOICES = 16
MAX_INPUTS = 2048
"""Texts in one embedding request (OpenAI's limit): more is a 400, not minutes of work."""
MAX_DOCUMENTS = 1000
"""Documents in one rerank request (Cohere's recommended most)."""
MEDIA_PARTS = frozenset({"image_url", "input_image", "image", "input_audio", "audio"})

ModelName = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Count = Annotated[int, Field(strict=True)]
"""A token or answer count: ``"5"`` or ``true`` is an error (as OpenAI's API has it), not 5."""


def _not_a_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError('a duration ("5m", seconds, 0 to unload at once, -1 to keep), not a bool')
    return value


KeepAlive = Annotated[str | float | None, BeforeValidator(_not_a_bool)]
"""Ollama's ``keep_alive``: ``false`` would read as 0 and unload the model, so a bool is an
error rather than a guess."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionMessageParam(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class _SamplingRequest(_Request):
    model: ModelName
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Count | None = Field(default=None, ge=0, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: Count | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | int | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | list[list[Any]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS
    )
    """OpenAI's token id → bias map (llama.cpp also takes ``[[token, bias], …]``)."""
    user: str | None = None
    keep_alive: KeepAlive = None
    """Ollama's: how long the model stays loaded after this request (``"5m"``, ``0``, ``-1``)."""


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatCompletionMessageParam] = Field(min_length=1)
    max_completion_tokens: Count | None = Field(default=None, ge=0, le=MAX_TOKENS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def has_media(self) -> bool:
        """Whether any message carries an image or audio part."""
        return any(
            isinstance(part, dict) and part.get("type") in MEDIA_PARTS
            for message in self.messages
            if isinstance(message.content, list)
            for part in message.content
        )


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    best_of: Count | None = Field(default=None, ge=1, le=MAX_CHOICES)


class EmbeddingRequest(_Request):
    model: ModelName
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    truncate: bool | None = None
    """Cut over-long inputs to the model's limit instead of rejecting them (Ollama's)."""
    keep_alive: KeepAlive = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts_only(cls, value: object) -> object:
        if isinstance(value, list):
            if not value:
                raise ValueError("must not be empty: send a string or a list of strings")
            if len(value) > MAX_INPUTS:
                raise ValueError(
                    f"has {len(value)} items; at most {MAX_INPUTS} per request: send them in "
                    "several requests"
                )
            if all(isinstance(x, int) for x in value) or all(isinstance(x, list) for x in value):
                raise ValueError(
                    "token arrays are not supported: send text (clients that tokenize for "
                    "OpenAI models, like LangChain's OpenAIEmbeddings, need "
                    "check_embedding_ctx_length=False)"
                )
            for i, x in enumerate(value):
                if not isinstance(x, str):
                    raise ValueError(f"item {i} is {type(x).__name__}; every item must be a string")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class RerankDocument(_Request):
    text: str


class RerankRequest(_Request):
    """Cohere's (v1 and v2) and Jina's rerank request; documents as strings or ``{"text"}``."""

    model: ModelName
    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    top_n: int | None = Field(default=None, ge=1)
    top_k: int | None = Field(default=None, ge=1)
    """What several self-hosted rerank APIs call ``top_n``."""
    return_documents: bool = True
    truncate: bool | None = None
    keep_alive: KeepAlive = None

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    @field_validator("top_k")
    @classmethod
    def _one_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("top_n") not in (None, value):
            raise ValueError("top_n and top_k are the same limit: give one of them")
        return value

    @model_validator(mode="after")
    def _top_k_is_top_n(self) -> RerankRequest:
        if self.top_k is not None:
            self.top_n = self.top_k
        return self


class ModelLoadRequest(_Request):
    model: ModelName
    keep_alive: KeepAlive = None


class ModelUnloadRequest(_Request):
    model: ModelName


class ModelPinRequest(_Request):
    model: ModelName
    pinned: bool = True


class Named(_Request):
    """A request naming a model as ``model``, or as older Ollama clients do, ``name``."""

    model: ModelName

    @model_validator(mode="before")
    @classmethod
    def _name_is_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" not in data and "name" in data:
            return {**data, "model": data["name"]}
        return data


class ModelPullRequest(Named):
    """``owner/repo``, ``owner/repo:QUANT`` or ``owner/repo:file.gguf``, optionally ``@rev``."""

    stream: bool = True


class ModelShowRequest(Named):
    verbose: bool = False


class ModelDeleteRequest(Named):
    force: bool = False
    """Unload the model first if it is loaded (else a loaded model is not deleted)."""


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "modelyard"
    kind: str
    state: str
    aliases: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    """Endpoints it serves: ``chat``, ``completion``, ``embedding``, ``rerank``."""
    rerank_method: Literal["cross-encoder", "cosine"] | None = None
    """How it ranks documents: a cross-encoder's scores, or embedding cosine similarity."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ResponseRequest(_Request):
    """The Responses API's ``POST /v1/responses`` (its stateless part)."""

    model: ModelName
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: Count | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool = False
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    keep_alive: KeepAlive = None
