"""``/openapi.json``: every operation with its request body (``api.request.documented``) and
every error status it can answer, each with the body that status carries: OpenAI's envelope,
or on Ollama's and Anthropic's routes theirs (``api.errors.envelope_for``).

FastAPI documents a 422 for routes with parameters; the gateway answers a bad request with a
400 instead, so that one is replaced.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from modelyard.api.routes import MODEL_ROUTES, OLLAMA_PATHS, face_of

_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_OLLAMA_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
}
_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_REASONS = {
    400: "Invalid request (the first problem, with its field in param)",
    401: "No key, or a key that is not valid",
    403: "The key's role or models do not allow it, or a cross-site admin request",
    404: "No such model or resource",
    409: "It clashes with what is going on (a model in use)",
    413: "The body is larger than the server accepts",
    415: "An admin request's body is not JSON",
    429: "Queue full, rate limit or token balance (Retry-After says when to retry)",
    500: "An unexpected failure of the gateway",
    501: "An operation of Ollama's API that modelyard does not offer",
    502: "The model's engine (or the hub) failed or did not answer",
    503: "The model failed to load, the queue wait ran out, or the server is stopping",
    507: "The model does not fit in memory, or the disk is full",
}
_EVERY = (400, 404, 413, 500)
_KEYED = (401, 403, 429)
_MODEL = (404, 502, 503, 507)


def _statuses(method: str, path: str) -> tuple[int, ...]:
    codes = [*_EVERY, *_KEYED]  # a public route too: a login refused, a request too many
    if "{" in path or method in ("POST", "DELETE", "PATCH"):
        codes += [404]
    if method != "GET" and path.startswith(("/api/", "/upstream/")):
        codes += [403, 415]
    if path in ("/api/create", "/api/copy", "/api/push"):
        codes += [501]
    if path.startswith(("/v1/", "/rerank", "/v2/", "/upstream/")) or path in OLLAMA_PATHS:
        codes += list(_MODEL)
    if path in ("/api/delete", "/api/pull", "/api/keys", "/api/users"):
        codes += [409, 502, 507]
    return tuple(sorted(set(codes)))


_STREAMS = {
    "/api/chat": "application/x-ndjson",
    "/api/generate": "application/x-ndjson",
    "/api/pull": "application/x-ndjson",
}
"""Routes whose answer, with ``"stream": true``, is a stream rather than one JSON body."""


def _stream_type(path: str) -> tuple[str, ...]:
    if path in _STREAMS:
        return (_STREAMS[path], "text/event-stream") if path == "/api/pull" else (_STREAMS[path],)
    if path in MODEL_ROUTES and path not in OLLAMA_PATHS and "embed" not in path:
        return () if "rerank" in path else ("text/event-stream",)
    return ()


def _error_schema(path: str) -> dict[str, Any]:
    face = face_of(path)
    if face == "ollama":
        return _OLLAMA_ERROR
    if face == "anthropic":
        return _ANTHROPIC_ERROR
    return _OPENAI_ERROR


def document_errors(app: FastAPI) -> None:
    """Makes ``app.openapi()`` list each operation's error statuses with their bodies."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                success = responses.get("200", {}).get("content")
                for media in _stream_type(path):
                    if success is not None:
                        success[media] = {"schema": {"type": "string"}}
                for status in _statuses(method.upper(), path):
                    responses.setdefault(
                        str(status),
                        {
                            "description": _REASONS[status],
                            "content": {"application/json": {"schema": _error_schema(path)}},
                        },
                    )
        schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
        schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
