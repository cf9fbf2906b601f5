"""The ASGI application: routes, the error handler, and the lifespan that owns the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard import __version__
from modelyard.api import admin, errors, openai
from modelyard.api.proxy import Upstream
from modelyard.catalog.catalog import Catalog
from modelyard.config import Config
from modelyard.runners.base import Runner
from modelyard.runners.encoder import EncoderRunner
from modelyard.runners.llamacpp import LlamaCppRunner
from modelyard.scheduler import Scheduler
from modelyard.scheduler.budget import MeasuredFootprints, resolve_budget
from modelyard.scheduler.clock import Clock

log = logging.getLogger(__name__)


class RequestId:
    """Gives every response an ``X-Request-Id`` (the client's own, if it sent one)."""

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
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(
    config: Config,
    *,
    runners: Mapping[str, Runner] | None = None,
    budget: Mapping[str, int] | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """The server for ``config``; tests may replace the runners, budget and clock."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = Scheduler(
            Catalog(config.models),
            runners
            or {
                "llamacpp": LlamaCppRunner(config.home / "logs"),
                "encoder": EncoderRunner(config.home / "logs", config.home / "cache"),
            },
            dict(budget) if budget is not None else resolve_budget(config.ram),
            clock=clock,
            min_residency=config.min_residency,
            stop_grace=config.stop_grace,
            measured=MeasuredFootprints(config.home / "footprints.json"),
        )
        app.state.scheduler = scheduler
        app.state.upstream = Upstream()
        app.state.started_at = time.time()
        app.state.preload = _preload(scheduler)
        try:
            yield
        finally:
            if app.state.preload is not None:
                app.state.preload.cancel()
            await scheduler.close()
            await app.state.upstream.close()

    app = FastAPI(
        title="modelyard",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    errors.install(app)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.add_middleware(RequestId)
    return app


def _preload(scheduler: Scheduler) -> asyncio.Task[None] | None:
    names = [s.name for s in scheduler.status() if _wants_preload(scheduler, s.name)]
    if not names:
        return None

    async def run() -> None:
        results = await asyncio.gather(
            *(scheduler.load(name) for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.error("preloading %s failed: %s", name, result)

    return asyncio.create_task(run(), name="preload")


def _wants_preload(scheduler: Scheduler, name: str) -> bool:
    spec = scheduler.spec(name)
    return spec.preload or spec.pinned
