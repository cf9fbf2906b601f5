"""OpenAI-compatible endpoints: models, chat completions, completions, embeddings, rerank.
Thin routes: they parse, and ``api.serving`` serves."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelyard.api.auth import may_see, principal_of
from modelyard.api.request import documented, read_json, scheduler_of
from modelyard.api.serving import serve_embeddings, serve_generation, serve_rerank
from modelyard.catalog.spec import ModelSpec
from modelyard.errors import (
    ModelNotFoundError,
)
from modelyard.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Model,
    ModelList,
    RerankRequest,
)
from modelyard.scheduler import Listed

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    scheduler = scheduler_of(request)
    principal = principal_of(request)
    created = int(request.app.state.started_at)
    # Removed models are finishing their last requests: not offered any more.
    return ModelList(
        data=[
            _model(s, created)
            for s in scheduler.listing()
            if not s.removed and may_see(principal, s.spec)
        ]
    )


@router.get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> Model:
    """One model by name or alias (OpenAI's ``models.retrieve``); ids may hold ``/``."""
    scheduler = scheduler_of(request)
    spec = scheduler.spec(model)  # 404 model_not_found when unknown
    for status in scheduler.listing():
        if status.name == spec.name and not status.removed and may_see(principal_of(request), spec):
            return _model(status, int(request.app.state.started_at))
    raise ModelNotFoundError(f"The model {model!r} was removed from the catalog", param="model")


def _model(status: Listed, created: int) -> Model:
    spec = status.spec
    return Model(
        id=status.name,
        created=created,
        kind=spec.kind,
        state=status.state,
        aliases=list(spec.aliases),
        capabilities=list(spec.capabilities),
        rerank_method=_rerank_method(spec),
    )


def _rerank_method(spec: ModelSpec) -> Literal["cross-encoder", "cosine"] | None:
    if "rerank" not in spec.capabilities:
        return None
    return "cosine" if spec.kind == "embedding" else "cross-encoder"


@router.post("/v1/chat/completions", openapi_extra=documented(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await _generate(request, ChatCompletionRequest, "/v1/chat/completions")


@router.post("/v1/completions", openapi_extra=documented(CompletionRequest))
async def completions(request: Request) -> Response:
    return await _generate(request, CompletionRequest, "/v1/completions")


async def _generate(
    request: Request, schema: type[ChatCompletionRequest] | type[CompletionRequest], path: str
) -> Response:
    """Validate → resolve → lease (queue, load) → proxy → release."""
    body, parsed = await read_json(request, schema)
    return await serve_generation(request, body, parsed, path)


@router.post("/v1/embeddings", openapi_extra=documented(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    body, parsed = await read_json(request, EmbeddingRequest)
    return await serve_embeddings(request, body, parsed)


@router.post("/v1/rerank", openapi_extra=documented(RerankRequest))
@router.post("/v2/rerank", openapi_extra=documented(RerankRequest))
@router.post("/rerank", openapi_extra=documented(RerankRequest))
async def rerank(request: Request) -> Response:
    """Cohere (v1, v2) and Jina shapes in; ``results`` sorted by ``relevance_score`` out."""
    _, parsed = await read_json(request, RerankRequest)
    return await serve_rerank(request, parsed)
