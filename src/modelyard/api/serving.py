"""The one serving layer under every API: the OpenAI routes and the Ollama, Anthropic and
Responses dialects parse and shape; what serves a request is here. It resolves the model and
checks the caller may use it, asks the engine to shape the request (``modelyard.engines``),
reads every length knob once (``api.length``), and hands the request to a ``Dispatch``, which
reserves the caller's charge, takes the lease, forwards, relays, releases and settles."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.responses import Response

from modelyard.accounts.service import Accounts, Bill
from modelyard.api.auth import check_model, principal_of, residency
from modelyard.api.dispatch import Dispatch, Shape
from modelyard.api.length import LIMITS, Length, generation
from modelyard.api.request import scheduler_of
from modelyard.catalog.spec import ModelSpec
from modelyard.dialect.base import Dialect
from modelyard.engines import engine_of
from modelyard.errors import InvalidRequestError, RunnerError, WrongModelKindError
from modelyard.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RerankRequest,
)
from modelyard.scheduler import Scheduler, Unset

LEGACY_MAX_TOKENS = 16
"""OpenAI's (and vLLM's) default for ``/v1/completions``; llama.cpp's own would fill the
context."""


async def serve_generation(
    request: Request,
    body: dict[str, Any],
    parsed: ChatCompletionRequest | CompletionRequest,
    path: str,
    dialect: Dialect | None = None,
) -> Response:
    """Serves a chat or completion request (``body``, validated as ``parsed``) at ``path``,
    answered in ``dialect`` when another API asked (``modelyard.dialect``)."""
    scheduler = scheduler_of(request)
    spec = _model_for(request, scheduler, parsed.model, "chat", path)
    engine = engine_of(spec)
    keep_alive = residency(request, spec, parsed.keep_alive)
    payload: dict[str, Any] = dict(body)
    payload.pop("keep_alive", None)
    payload["model"] = spec.upstream_model or spec.name
    payload["stream"] = parsed.stream
    for key, value in spec.defaults.items():
        if payload.get(key) is None:
            payload[key] = value
    if isinstance(parsed, CompletionRequest):
        if all(payload.get(key) is None for key in LIMITS):
            payload["max_tokens"] = LEGACY_MAX_TOKENS
        if dialect is None:
            dialect = engine.adapt_completion(parsed, payload)
    else:
        dialect = engine.adapt_chat(spec, parsed, payload, dialect)
    # Every length field of every API, read once: the engine is sent exactly that limit.
    length = generation(payload, ctx=spec.ctx, prompt=len(await request.body()))
    length.apply(payload, sized=engine.sized)
    gathered = False
    if engine.gathers:
        # Each chunk then tells how far its answer has got: a stream stopped early is
        # charged what was generated. A whole answer is streamed too and gathered: its
        # client may leave, and llama.cpp's whole answer counts one choice only.
        gathered = not parsed.stream
        payload["stream"] = True
        payload["timings_per_token"] = True
    strip_usage = False
    if parsed.stream and (request.app.state.accounts is not None or dialect is not None):
        # The ledger and the dialects need the usage: ask for it, and leave it out again if
        # the client didn't (a dialect speaks it in its own way).
        options = payload.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage")):
            payload["stream_options"] = {**(options or {}), "include_usage": True}
            strip_usage = dialect is None
    return await _forward(
        request,
        scheduler,
        spec,
        keep_alive,
        path,
        payload,
        None,
        (length.expected, length.worst),
        strip_usage,
        dialect,
        length,
        gathered,
    )


async def serve_embeddings(
    request: Request, body: dict[str, Any], parsed: EmbeddingRequest, dialect: Dialect | None = None
) -> Response:
    """Serves an embedding request (``body``, validated as ``parsed``)."""
    scheduler = scheduler_of(request)
    spec = _model_for(request, scheduler, parsed.model, "embedding", "/v1/embeddings")
    # The encoder worker checks `dimensions` itself (it knows the model's width).
    engine = engine_of(spec)
    if parsed.dimensions is not None and not spec.matryoshka and not engine.checks_dimensions:
        raise InvalidRequestError(
            f"Model {spec.name!r} does not support 'dimensions': it was not trained to be "
            "shortened (set matryoshka = true in its catalog entry if it was)",
            param="dimensions",
        )
    payload: dict[str, Any] = dict(body)
    payload.pop("keep_alive", None)
    payload["model"] = spec.upstream_model or spec.name
    shape = engine.adapt_embedding(parsed.dimensions, parsed.encoding_format, payload)
    keep_alive = residency(request, spec, parsed.keep_alive)
    # Every token of the input is read once: the body's bytes bound them.
    size = len(await request.body())
    path = "/v1/embeddings"
    return await _forward(
        request, scheduler, spec, keep_alive, path, payload, shape, (size, size), dialect=dialect
    )


async def serve_rerank(request: Request, parsed: RerankRequest) -> Response:
    """Serves a rerank request (Cohere's or Jina's shape): ``results`` sorted by
    ``relevance_score``."""
    scheduler = scheduler_of(request)
    spec = _model_for(request, scheduler, parsed.model, "rerank", request.url.path)
    documents = parsed.texts()
    payload: dict[str, Any] = {
        "model": spec.upstream_model or spec.name,
        "query": parsed.query,
        "documents": documents,
    }
    if parsed.truncate is not None and engine_of(spec).truncates:
        payload["truncate"] = parsed.truncate
    shape = _ranker(parsed, documents, request.state.request_id)
    keep_alive = residency(request, spec, parsed.keep_alive)
    # A cross-encoder reads the query once with every document.
    size = len(await request.body()) + len(parsed.query.encode()) * len(documents)
    path = "/v1/rerank"
    return await _forward(request, scheduler, spec, keep_alive, path, payload, shape, (size, size))


def _model_for(
    request: Request, scheduler: Scheduler, model: str, capability: str, path: str
) -> ModelSpec:
    spec = scheduler.spec(model)
    check_model(principal_of(request), spec)
    if capability not in spec.capabilities:
        raise WrongModelKindError(
            f"Model {spec.name!r} serves {', '.join(spec.capabilities)}; {path} needs one "
            f"that serves {capability} (see capabilities in /v1/models)",
            param="model",
        )
    return spec


def _ranker(parsed: RerankRequest, documents: list[str], request_id: str) -> Shape:
    """Sorts the runner's scores, keeps ``top_n``, attaches documents when asked to."""

    def shape(answer: bytes) -> bytes:
        try:
            data = json.loads(answer)
            scored = [(int(r["index"]), float(r["relevance_score"])) for r in data["results"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise RunnerError(f"model server sent a malformed rerank answer: {exc}") from exc
        scored.sort(key=lambda r: -r[1])
        results: list[dict[str, Any]] = []
        for index, score in scored[: parsed.top_n]:
            result: dict[str, Any] = {"index": index, "relevance_score": score}
            if parsed.return_documents:
                result["document"] = {"text": documents[index]}
            results.append(result)
        usage = data.get("usage") or {}
        tokens = int(usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
        out = {
            "id": f"rerank-{request_id}",
            "object": "rerank",
            "model": data.get("model") or parsed.model,
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return json.dumps(out).encode()

    return shape


async def _forward(
    request: Request,
    scheduler: Scheduler,
    spec: ModelSpec,
    keep_alive: float | Unset | None,
    path: str,
    payload: dict[str, Any],
    shape: Shape | None,
    tokens: tuple[int, int],
    strip_usage: bool = False,
    dialect: Dialect | None = None,
    length: Length | None = None,
    gathered: bool = False,
) -> Response:
    """The response that serves ``payload`` (see ``modelyard.api.dispatch``); ``tokens``:
    the most it is expected to use and may use at worst, for the limits and the balance."""
    trace = request.scope["state"].get("trace")
    if trace is not None:
        trace.price = spec.price
    principal = principal_of(request)
    accounts: Accounts | None = request.app.state.accounts
    bill = None
    if accounts is not None and accounts.required:
        estimate, worst = tokens
        bill = Bill(accounts, principal, estimate, worst, spec.price)

    return Dispatch(
        scheduler,
        request.app.state.upstream,
        model=spec.name,
        keep_alive=keep_alive,
        path=path,
        payload=payload,
        request_id=request.state.request_id,
        trace=trace,
        shape=shape,
        bill=bill,
        strip_usage=strip_usage,
        client=principal.client,
        weight=principal.priority,
        dialect=dialect,
        length=length,
        gathered=gathered,
    )
