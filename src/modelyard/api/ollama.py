"""Ollama's API, so that its clients (the ``ollama`` Python and JS packages, Open WebUI, Zed,
Continue) work with the base URL changed: ``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/embeddings``, ``/api/tags``, ``/api/version``, and 501 for what modelyard does not do
(``create``, ``copy``, ``push``). ``/api/ps``, ``/api/show``, ``/api/pull`` and
``/api/delete`` answer in Ollama's shape with modelyard's own fields added
(``api.admin``, ``api.models``).

Chats and generations go through the OpenAI chat path (``api.serving.serve_generation``)
with an ``OllamaDialect``: the same queue, limits and ledger as ``/v1/chat/completions``.
Errors are Ollama's ``{"error": "message"}`` (``api.errors.envelope_for``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from modelyard import __version__
from modelyard.accounts.identity import Role
from modelyard.api.auth import check_model, may_see, principal_of, residency
from modelyard.api.request import documented, keep_alive_of, read_json, scheduler_of, validate
from modelyard.api.serving import serve_embeddings, serve_generation
from modelyard.catalog.details import Details, describe, ollama_name
from modelyard.dialect.base import Dialect
from modelyard.dialect.ollama import (
    OllamaDialect,
    chat_messages,
    image_part,
    now_iso,
    ollama_envelope,
    response_format,
    sampling,
)
from modelyard.errors import (
    ModelyardError,
    NotSupportedError,
    RoleError,
    RunnerError,
    UnsupportedFeatureError,
    WrongModelKindError,
)
from modelyard.protocol.ollama import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
)
from modelyard.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

router = APIRouter()

OLLAMA_API_VERSION = "0.12.6"
"""The Ollama release whose API this one follows (clients compare it to enable features)."""


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_API_VERSION, "modelyard": __version__}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    """Every model this client may use, in Ollama's list shape."""
    scheduler = scheduler_of(request)
    principal = principal_of(request)
    specs = [s.spec for s in scheduler.listing() if not s.removed and may_see(principal, s.spec)]
    described = await asyncio.to_thread(lambda: [describe(spec) for spec in specs])
    return {
        "models": [
            {
                "name": ollama_name(spec),
                "model": ollama_name(spec),
                "modified_at": d.modified_at,
                "size": d.size,
                "digest": d.digest,
                "details": d.details,
            }
            for spec, d in zip(specs, described, strict=True)
        ]
    }


def ollama_fields(d: Details) -> dict[str, Any]:
    """What ``/api/show`` adds in Ollama's shape (``parameters`` is Ollama's text)."""
    return {
        "details": d.details,
        "model_info": d.model_info,
        "capabilities": d.capabilities,
        "template": d.template,
        "modelfile": "",
        "license": "",
        "modified_at": d.modified_at,
        "digest": d.digest,
    }


@router.post("/api/chat", openapi_extra=documented(OllamaChatRequest))
async def chat(request: Request) -> Response:
    body, parsed = await read_json(request, OllamaChatRequest)
    if not parsed.messages:
        return await _load_or_unload(request, parsed.model, parsed.keep_alive, generate=False)
    payload = _generation(parsed)
    payload["messages"] = chat_messages(body["messages"])
    if parsed.tools:
        payload["tools"] = parsed.tools
    chat = validate(ChatCompletionRequest, payload)
    dialect = OllamaDialect(parsed.model)
    return await serve_generation(request, payload, chat, "/v1/chat/completions", dialect)


@router.post("/api/generate", openapi_extra=documented(OllamaGenerateRequest))
async def generate(request: Request) -> Response:
    _, parsed = await read_json(request, OllamaGenerateRequest)
    if parsed.suffix:
        raise UnsupportedFeatureError(
            "suffix (fill in the middle) is not supported: send the text before it as the prompt",
            param="suffix",
        )
    if parsed.template:
        raise UnsupportedFeatureError(
            "A per-request template is not supported: set chat_template in the model's "
            "catalog entry, or send raw: true with the prompt already formatted",
            param="template",
        )
    if not parsed.prompt and not parsed.images:
        return await _load_or_unload(request, parsed.model, parsed.keep_alive, generate=True)
    payload = _generation(parsed)
    dialect = OllamaDialect(parsed.model, generate=True)
    if parsed.raw:
        if parsed.images:
            raise UnsupportedFeatureError(
                "images need the chat template: send them without raw", param="images"
            )
        payload["prompt"] = parsed.prompt
        payload.pop("chat_template_kwargs", None)
        completion = validate(CompletionRequest, payload)
        return await serve_generation(request, payload, completion, "/v1/completions", dialect)
    messages: list[dict[str, Any]] = []
    if parsed.system:
        messages.append({"role": "system", "content": parsed.system})
    content: str | list[dict[str, Any]] = parsed.prompt
    if parsed.images:
        text = [{"type": "text", "text": parsed.prompt}] if parsed.prompt else []
        content = text + [image_part(img, n) for n, img in enumerate(parsed.images)]
    messages.append({"role": "user", "content": content})
    payload["messages"] = messages
    chat = validate(ChatCompletionRequest, payload)
    return await serve_generation(request, payload, chat, "/v1/chat/completions", dialect)


def _generation(parsed: OllamaChatRequest | OllamaGenerateRequest) -> dict[str, Any]:
    """The OpenAI request fields that chat and generate share."""
    payload: dict[str, Any] = {"model": parsed.model, "stream": parsed.stream}
    payload.update(sampling(parsed.options))
    fmt = response_format(parsed.format)
    if fmt is not None:
        payload["response_format"] = fmt
    if parsed.think:
        payload["chat_template_kwargs"] = {"enable_thinking": True}
        if isinstance(parsed.think, str):
            payload["reasoning_effort"] = parsed.think
    if parsed.keep_alive is not None:
        payload["keep_alive"] = parsed.keep_alive
    return payload


async def _load_or_unload(
    request: Request, model: str, keep_alive: str | float | None, *, generate: bool
) -> Response:
    """Ollama's empty request: loads the model, or with ``keep_alive: 0`` unloads it.

    Unloading is an admin's right (``/api/unload``'s). Anyone allowed the model may load it,
    as its first request would: counted as a request against the rate limits and in the
    ledger (no tokens), its ``keep_alive`` bound as any request's (``auth.keep_alive_for``).
    """
    scheduler = scheduler_of(request)
    spec = scheduler.spec(model)
    principal = principal_of(request)
    check_model(principal, spec)
    if "chat" not in spec.capabilities:
        raise WrongModelKindError(
            f"Model {spec.name!r} does not generate text ({', '.join(spec.capabilities)})",
            param="model",
        )
    unload = keep_alive_of(keep_alive) == 0
    if unload and principal.role is not Role.ADMIN:
        raise RoleError(
            f"The role {principal.role} may not unload models (keep_alive 0 on an empty "
            "request is an unload, an admin's right); send the request with a prompt"
        )
    trace = request.scope["state"]["trace"]  # a model route: always traced (api.telemetry)
    trace.model = spec.name
    accounts = request.app.state.accounts
    if accounts is not None and accounts.required:
        trace.charge = await accounts.admit(principal, 0, 0, spec.price)
    if unload:
        await scheduler.unload(spec.name)
        reason = "unload"
    else:
        await scheduler.load(spec.name, residency(request, spec, keep_alive))
        reason = "load"
    line: dict[str, Any] = {"model": model, "created_at": now_iso()}
    if generate:
        line["response"] = ""
    else:
        line["message"] = {"role": "assistant", "content": ""}
    line.update(done_reason=reason, done=True)
    return JSONResponse(line)


class _EmbedDialect(Dialect):
    """``/api/embed`` (``embeddings``) or ``/api/embeddings`` (one ``embedding``)."""

    def __init__(self, model: str, *, single: bool) -> None:
        super().__init__(model)
        self._single = single

    def answer(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
            vectors = [item["embedding"] for item in data["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise RunnerError(f"model server sent malformed embeddings: {exc}") from None
        if self._single:
            return json.dumps({"embedding": vectors[0]}).encode()
        usage = data.get("usage") or {}
        return json.dumps(
            {
                "model": self.model,
                "embeddings": vectors,
                "total_duration": int((time.perf_counter() - self.started) * 1e9),
                "load_duration": int(self.load_wait * 1e9),
                "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
            }
        ).encode()

    def envelope(self, exc: ModelyardError) -> dict[str, Any]:
        return ollama_envelope(exc)


@router.post("/api/embed", openapi_extra=documented(OllamaEmbedRequest))
async def embed(request: Request) -> Response:
    _, parsed = await read_json(request, OllamaEmbedRequest)
    extra: dict[str, Any] = {"truncate": parsed.truncate}
    if parsed.dimensions is not None:
        extra["dimensions"] = parsed.dimensions
    dialect = _EmbedDialect(parsed.model, single=False)
    return await _embed(request, parsed.model, parsed.input, parsed.keep_alive, dialect, extra)


@router.post("/api/embeddings", openapi_extra=documented(OllamaEmbeddingsRequest))
async def embeddings(request: Request) -> Response:
    _, parsed = await read_json(request, OllamaEmbeddingsRequest)
    dialect = _EmbedDialect(parsed.model, single=True)
    return await _embed(request, parsed.model, parsed.prompt, parsed.keep_alive, dialect, {})


async def _embed(
    request: Request,
    model: str,
    texts: str | list[str],
    keep_alive: str | float | None,
    dialect: Dialect,
    extra: dict[str, Any],
) -> Response:
    payload: dict[str, Any] = {"model": model, "input": texts, "encoding_format": "float"}
    payload.update(extra)
    if keep_alive is not None:
        payload["keep_alive"] = keep_alive
    parsed = validate(EmbeddingRequest, payload)
    return await serve_embeddings(request, payload, parsed, dialect)


@router.post("/api/create")
@router.post("/api/copy")
@router.post("/api/push")
async def not_supported(request: Request) -> Response:
    operation = request.url.path.removeprefix("/api/")
    raise NotSupportedError(
        f"modelyard does not {operation} models: it serves the files it finds. Put a GGUF or "
        "a model directory in the models directory, add an entry to modelyard.toml (aliases "
        "give a model another name), or pull one with modelyard pull"
    )


def ps_fields(d: Details, size: int, size_vram: int) -> dict[str, Any]:
    """What ``/api/ps`` adds to each model in Ollama's shape."""
    return {
        "size": size,
        "size_vram": size_vram,
        "digest": d.digest,
        "details": d.details,
        "context_length": d.context_length,
    }
