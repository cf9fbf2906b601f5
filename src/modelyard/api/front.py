"""The way in: the layers every request passes, ahead of FastAPI's own.

FastAPI wraps its app in layers of its own (its telemetry check, Starlette's error
middleware, a body limit, the exception middleware) and puts the app's middlewares inside
them. The gateway's own layers (request id, trace, guard, auth, the model routes' lane) do
all a model route needs, so ``App`` runs them first and outside: a model route goes from
them straight to its endpoint (``api.lane``), and every other request goes on into
FastAPI's way as before. That is a dozen calls and two wrapped ``send``s less per request.

``RequestId``, the outermost, answers for what FastAPI's error middleware did for these
layers: an exception that escapes before the answer started gets the app's handler for
``Exception`` (a logged 500 in OpenAI's shape), and goes on up to the server's log.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.logbook import request_id as current_request_id


class App(FastAPI):
    """FastAPI, with ``front`` (the gateway's layers) before everything FastAPI does."""

    front: ASGIApp | None = None
    """Made once the routes are in (``api.app.create_app``); it ends in ``inside``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self.front(scope, receive, send)

    async def inside(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own way: its layers, its router, its exception handlers."""
        await super().__call__(scope, receive, send)


class RequestId:
    """Gives every response an ``X-Request-Id`` (the client's own, if it sent one), and
    answers 500 for an exception nothing inside answered (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        current_request_id.set(request_id)  # for the log lines written while it is served
        header = (b"x-request-id", request_id.encode("latin-1"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            handler = scope["app"].exception_handlers.get(Exception)
            if started or handler is None:
                raise
            answer = await handler(Request(scope, receive), exc)
            await answer(scope, receive, send_with_id)
            raise
