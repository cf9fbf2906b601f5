"""Anthropic's Messages API: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

A Messages request is translated to the model's chat (``dialect.anthropic``) and served like
``/v1/chat/completions``; keys are taken from ``x-api-key`` as Anthropic's clients send them
(``api.auth``). Token counts come from the model's own template and tokenizer (llama.cpp's
``/apply-template`` and ``/tokenize``), so they are exact for what the model will read.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelyard.api.auth import check_model, principal_of
from modelyard.api.proxy import upstream_error
from modelyard.api.request import documented, read_json, scheduler_of, validate
from modelyard.api.serving import serve_generation
from modelyard.dialect.anthropic import AnthropicDialect, chat_payload
from modelyard.engines import engine_of
from modelyard.errors import RunnerError, UnsupportedFeatureError, WrongModelKindError
from modelyard.protocol.anthropic import CountTokensRequest, MessagesRequest
from modelyard.protocol.openai import ChatCompletionRequest

router = APIRouter()


@router.post("/v1/messages", openapi_extra=documented(MessagesRequest))
async def messages(request: Request) -> Response:
    body, parsed = await read_json(request, MessagesRequest)
    payload = chat_payload(body)
    if parsed.keep_alive is not None:
        payload["keep_alive"] = parsed.keep_alive
    chat = validate(ChatCompletionRequest, payload)
    dialect = AnthropicDialect(parsed.model, f"msg_{request.state.request_id}")
    return await serve_generation(request, payload, chat, "/v1/chat/completions", dialect)


@router.post("/v1/messages/count_tokens", openapi_extra=documented(CountTokensRequest))
async def count_tokens(request: Request) -> dict[str, int]:
    body, parsed = await read_json(request, CountTokensRequest)
    scheduler = scheduler_of(request)
    spec = scheduler.spec(parsed.model)
    check_model(principal_of(request), spec)
    if "chat" not in spec.capabilities:
        raise WrongModelKindError(f"Model {spec.name!r} does not chat", param="model")
    if not engine_of(spec).tokenize:
        raise UnsupportedFeatureError(
            f"Counting tokens needs the model's tokenizer: {spec.name!r} runs on the "
            f"{spec.engine} engine, which does not offer it (llama.cpp models do)",
            param="model",
        )
    payload = chat_payload({**body, "max_tokens": 1})
    payload.pop("max_tokens")
    lease = await scheduler.acquire(spec.name, request=request.state.request_id)
    served = False
    try:
        session = request.app.state.upstream.session
        base = lease.base_url.rstrip("/")
        prompt = await _post(session, f"{base}/apply-template", payload, lease.headers)
        tokens = await _post(
            session,
            f"{base}/tokenize",
            {"content": prompt.get("prompt", ""), "add_special": True},
            lease.headers,
        )
        served = True
    finally:
        scheduler.release(lease, served=served)
    return {"input_tokens": len(tokens.get("tokens") or [])}


async def _post(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], headers: Any
) -> dict[str, Any]:
    try:
        async with session.post(url, json=payload, headers=dict(headers)) as got:
            body = await got.read()
            status = got.status
    except aiohttp.ClientError as exc:
        raise RunnerError(f"model server request failed: {exc}") from exc
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status >= 400:
        raise upstream_error(status, body)
    if not isinstance(data, dict):
        raise RunnerError(f"model server sent a malformed answer: {body[:200]!r}")
    return data
