"""The one place that turns exceptions into error responses: OpenAI's envelope, or on the
routes of another API (Ollama's, Anthropic's) the shape its clients read."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from modelyard.accounts.identity import Role
from modelyard.api.routes import face_of
from modelyard.dialect.anthropic import anthropic_envelope
from modelyard.dialect.ollama import ollama_envelope
from modelyard.errors import InvalidRequestError, ModelyardError, invalid_request

log = logging.getLogger(__name__)

# A client retrying against a model that backs off produced 100,000 identical warnings in
# ten minutes: the same error is logged once per window, with a count of the ones held back.
_LOG_WINDOW = 10.0


class _Throttle:
    """Logs one line per (error class, model-ish message head) per window."""

    def __init__(self, window: float = _LOG_WINDOW) -> None:
        self._window = window
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def warn(self, exc: ModelyardError) -> None:
        key = (type(exc).__name__, exc.message[:60])
        now = time.monotonic()
        last, held = self._seen.get(key, (-math.inf, 0))
        if now - last < self._window:
            self._seen[key] = (last, held + 1)
            return
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        more = f" (and {held} more like it)" if held else ""
        log.warning("%s: %s%s", type(exc).__name__, exc.message, more)


throttle = _Throttle()


Envelope = Callable[[ModelyardError], dict[str, Any]]


def envelope_for(path: str) -> Envelope | None:
    """The error shape of the API ``path`` belongs to; ``None``: OpenAI's."""
    face = face_of(path)
    if face == "ollama":
        return ollama_envelope
    if face == "anthropic":
        return anthropic_envelope
    return None


def error_response(
    exc: ModelyardError, envelope: Envelope | None = None, *, path: str = ""
) -> JSONResponse:
    """The response for ``exc``: in ``envelope``'s shape, else in that of ``path``'s API."""
    envelope = envelope or envelope_for(path)
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    body = envelope(exc) if envelope is not None else exc.envelope()
    return JSONResponse(body, status_code=exc.status, headers=headers)


def sse_error_frame(exc: ModelyardError) -> bytes:
    """What a stream that already started sends instead of a status code."""
    return b"data: " + json.dumps(exc.envelope()).encode() + b"\n\ndata: [DONE]\n\n"


def from_validation(exc: ValidationError | RequestValidationError) -> InvalidRequestError:
    """The first problem, with its dotted field path in ``param``."""
    return invalid_request(exc.errors())


def report(exc: ModelyardError) -> None:
    """Logs a server-side failure (throttled); client mistakes are not logged."""
    if exc.status >= 500 and exc.status != 501:  # 501: asked for what is not offered
        throttle.warn(exc)


# An absolute path in a message: its directories are the server's business, not a user's.
_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s/'\"]+/)+(?=[^\s/'\"]+)")


def shown_to(scope: Mapping[str, Any], exc: ModelyardError) -> ModelyardError:
    """``exc`` as the caller may read it: a server-side failure (a load that failed, a runner
    that crashed) names the server's files; a caller that does not run the server (a user
    key) reads their names without their directories."""
    principal = scope.get("state", {}).get("principal")
    if exc.status < 500 or principal is None or principal.role in (Role.ADMIN, Role.MONITOR):
        return exc
    shown = copy.copy(exc)
    shown.message = _PATH.sub("", exc.message)
    return shown


def install(app: FastAPI) -> None:
    async def on_modelyard(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ModelyardError)
        report(exc)
        return error_response(shown_to(request.scope, exc), path=request.url.path)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return error_response(from_validation(exc), path=request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = ModelyardError(str(exc.detail))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        response = error_response(error, path=request.url.path)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_disconnect(_: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # the client left while sending: nobody reads this

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Starlette re-raises it after this, so the traceback reaches the server log once.
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(ModelyardError("Internal server error"), path=request.url.path)

    app.add_exception_handler(ModelyardError, on_modelyard)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
