"""The one place that turns exceptions into OpenAI-style error responses."""

from __future__ import annotations

import json
import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from modelyard.errors import InvalidRequestError, ModelyardError

log = logging.getLogger(__name__)


def envelope(exc: ModelyardError) -> dict[str, object]:
    return {
        "error": {
            "message": exc.message,
            "type": exc.type,
            "param": exc.param,
            "code": exc.code,
        }
    }


def error_response(exc: ModelyardError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(envelope(exc), status_code=exc.status, headers=headers)


def sse_error_frame(exc: ModelyardError) -> bytes:
    """What a stream that already started sends instead of a status code."""
    return b"data: " + json.dumps(envelope(exc)).encode() + b"\n\ndata: [DONE]\n\n"


def from_validation(exc: ValidationError | RequestValidationError) -> InvalidRequestError:
    """The first problem, with its dotted field path in ``param``."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first["loc"] if p != "body"]
    param = ".".join(loc) or None
    message = str(first["msg"]).removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InvalidRequestError(message, param=param)


def install(app: FastAPI) -> None:
    async def on_modelyard(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ModelyardError)
        if exc.status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return error_response(from_validation(exc))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = ModelyardError(str(exc.detail))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(error)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Starlette re-raises it after this, so the traceback reaches the server log once.
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(ModelyardError("Internal server error"))

    app.add_exception_handler(ModelyardError, on_modelyard)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
