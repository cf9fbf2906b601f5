"""OpenAI-compatible endpoints: models, chat completions, completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from modelyard.api.proxy import Upstream, read_answer, relay
from modelyard.api.request import (
    ClientGone,
    DisconnectWatch,
    keep_alive_of,
    read_json,
    scheduler_of,
)
from modelyard.errors import WrongModelKindError
from modelyard.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    Model,
    ModelList,
)
from modelyard.scheduler import Scheduler
from modelyard.scheduler.scheduler import Unset

router = APIRouter()

_CLIENT_CLOSED = 499  # nginx's convention; nobody reads it, the client is gone


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    scheduler = scheduler_of(request)
    created = int(request.app.state.started_at)
    data = [
        Model(
            id=status.name,
            created=created,
            kind=scheduler.spec(status.name).kind,
            state=status.state,
            aliases=list(scheduler.spec(status.name).aliases),
        )
        for status in scheduler.status()
    ]
    return ModelList(data=data)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _generate(request, ChatCompletionRequest, "/v1/chat/completions")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _generate(request, CompletionRequest, "/v1/completions")


async def _generate(
    request: Request, schema: type[ChatCompletionRequest] | type[CompletionRequest], path: str
) -> Response:
    """Validate → resolve → lease (queue, load) → proxy → release."""
    body, parsed = await read_json(request, schema)
    scheduler = scheduler_of(request)
    spec = scheduler.spec(parsed.model)
    if spec.kind != "chat":
        raise WrongModelKindError(
            f"Model {spec.name!r} is a {spec.kind} model; {path} needs a chat model",
            param="model",
        )
    keep_alive = keep_alive_of(parsed.keep_alive)
    payload: dict[str, Any] = dict(body)
    payload.pop("keep_alive", None)
    payload["model"] = spec.name
    payload["stream"] = parsed.stream
    for key, value in spec.defaults.items():
        if payload.get(key) is None:
            payload[key] = value

    watch = DisconnectWatch(request)
    try:
        return await _proxy(request, watch, scheduler, spec.name, keep_alive, path, payload)
    except ClientGone:
        return Response(status_code=_CLIENT_CLOSED)
    finally:
        watch.close()


async def _proxy(
    request: Request,
    watch: DisconnectWatch,
    scheduler: Scheduler,
    model: str,
    keep_alive: float | Unset | None,
    path: str,
    payload: dict[str, Any],
) -> Response:
    lease = await watch.guard(scheduler.acquire(model, keep_alive))
    headers = {"X-Modelyard-Queue-Ms": f"{lease.queued * 1000:.1f}"}
    upstream: Upstream = request.app.state.upstream
    try:
        response = await watch.guard(
            upstream.post(
                lease.base_url + path, payload, {"X-Request-Id": request.state.request_id}
            )
        )
        if payload.get("stream") and response.status < 400:
            return StreamingResponse(
                relay(response, lambda: scheduler.release(lease)),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        answer = await watch.guard(read_answer(response))
    except BaseException:
        scheduler.release(lease)
        raise
    scheduler.release(lease)
    return Response(answer, media_type="application/json", headers=headers)
