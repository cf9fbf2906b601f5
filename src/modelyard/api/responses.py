"""OpenAI's Responses API: ``POST /v1/responses``, stateless (``dialect.responses``), served
through the chat path like ``/v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelyard.api.request import documented, read_json, validate
from modelyard.api.serving import serve_generation
from modelyard.dialect.responses import ResponsesDialect, chat_payload
from modelyard.protocol.openai import ChatCompletionRequest, ResponseRequest

router = APIRouter()


@router.post("/v1/responses", openapi_extra=documented(ResponseRequest))
async def responses(request: Request) -> Response:
    body, parsed = await read_json(request, ResponseRequest)
    payload = chat_payload(body)
    chat = validate(ChatCompletionRequest, payload)
    dialect = ResponsesDialect(parsed.model, f"resp_{request.state.request_id}", body)
    return await serve_generation(request, payload, chat, "/v1/chat/completions", dialect)
