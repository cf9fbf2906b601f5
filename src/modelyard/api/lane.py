"""The model routes' short way from the middlewares to their endpoints.

FastAPI reaches an endpoint through a dozen layers of its own (its router's match over every
route, the included routers', the dependency solver, exit stacks, the exception middleware),
about a tenth of the gateway's CPU for a request that does nothing else. The routes that serve
models (``routes.MODEL_ROUTES``) are the busy ones and need none of it: each takes the request
alone and answers a ``Response``. ``Lane``, the innermost middleware, calls those endpoints
itself; every other request, and a model route whose endpoint would need FastAPI (a parameter
of its own), goes through FastAPI as before.

Errors are answered as FastAPI would: the app's exception handler for the exception's class
(``api.errors``); an exception without one goes on up to Starlette's server error middleware,
which logs it and answers 500.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.api.routes import MODEL_ROUTES

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


def model_endpoints(routers: Iterable[APIRouter]) -> dict[tuple[str, str], Endpoint]:
    """(method, path) → endpoint, for the model routes of ``routers`` (included as they are:
    no prefix, no dependencies) whose endpoint takes the request alone and answers a
    ``Response``."""
    found: dict[tuple[str, str], Endpoint] = {}
    for route in (route for router in routers for route in router.routes):
        if not isinstance(route, APIRoute) or route.path not in MODEL_ROUTES:
            continue
        if route.dependencies or not _takes_request_alone(route.endpoint):
            continue
        for method in route.methods or ():
            found.setdefault((method, route.path), route.endpoint)
    return found


def _takes_request_alone(endpoint: Callable[..., Any]) -> bool:
    signature = inspect.signature(endpoint, eval_str=True)
    parameters = list(signature.parameters.values())
    answers = signature.return_annotation
    return (
        inspect.iscoroutinefunction(endpoint)
        and len(parameters) == 1
        and parameters[0].annotation is Request
        and isinstance(answers, type)
        and issubclass(answers, Response)
    )


class Lane:
    """ASGI middleware: the model routes' endpoints, called directly (see the module)."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self._endpoints = dict(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            self._endpoints.get((scope["method"], scope["path"]))
            if scope["type"] == "http"
            else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        started = False

        async def watched(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            response = await endpoint(request)
            await response(scope, receive, watched)
        except Exception as exc:
            handler = _handler(scope["app"].exception_handlers, exc)
            if handler is None or started:
                raise
            answer = await handler(request, exc)
            await answer(scope, receive, send)


def _handler(handlers: Mapping[Any, Handler], exc: Exception) -> Handler | None:
    """The app's handler for ``exc``'s class, as Starlette's exception middleware finds it
    (one for ``Exception`` itself is the server error middleware's, not ours)."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None
