"""The port opens before the app is built: ``Gate`` is the ASGI app uvicorn serves.

Importing the app (FastAPI and its routes, SQLAlchemy, aiohttp) and starting it (the accounts
database, the scheduler) takes a second or more on a small machine. Rather than make clients,
supervisors and health checks wait for the port, the gate listens at once and, until the app
has started:

- answers ``GET /health`` (the process is up): ``{"status": "ok"}``;
- answers ``GET /ready`` 503 ``{"status": "starting"}`` (then the app answers it: 503
  ``loading`` while models preload, 200 ``ready``);
- holds every other request, and hands it to the app once it has started: a client that
  connects early is served, a little later, never refused.

The app is imported and built in a thread (the event loop keeps answering), then its lifespan
is run here. If either fails, the error is logged, waiting requests get 503, and
``on_failure`` is called (the server exits with status 3, as uvicorn does when an app does
not start). At shutdown the app's lifespan is ended; a shutdown that comes while the app is
still starting waits for the start first, so that nothing it started is left running.

This module imports nothing slow: it is what runs before the port listens.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class StartupFailed(Exception):
    """The app's lifespan said its start failed (the message is Starlette's)."""


class Gate:
    def __init__(self, build: Callable[[], ASGIApp], on_failure: Callable[[], None]) -> None:
        self._build = build
        self._on_failure = on_failure
        self.app: ASGIApp | None = None
        """The app, once built (its lifespan may still be starting)."""
        self._started = asyncio.Event()
        """Set once the app has started, or failed to (``failed``)."""
        self.failed: str | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """The app has started and serves every request."""
        return self._started.is_set() and self.failed is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is not None and self._started.is_set() and self.failed is None:
            await self.app(scope, receive, send)  # the way every request goes once started
            return
        if scope["type"] == "lifespan":
            await self._serve_lifespan(receive, send)
            return
        if not self._started.is_set() and scope["type"] == "http" and scope["method"] == "GET":
            if scope["path"] == "/health":
                await _answer(send, 200, {"status": "ok"})
                return
            if scope["path"] == "/ready":
                await _answer(send, 503, {"status": "starting"}, retry_after=True)
                return
        await self._started.wait()
        if self.app is None or self.failed is not None:
            if scope["type"] == "http":
                error = {"message": "the server failed to start", "type": "server_error"}
                await _answer(send, 503, {"error": error})
            return
        await self.app(scope, receive, send)

    # ---- the app's start and stop -------------------------------------------------------

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        """uvicorn's lifespan: the start is begun and said complete at once; the stop waits
        for the app's own."""
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        self._starting = asyncio.create_task(self._start(), name="app start")
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            await self._stop()
            await send({"type": "lifespan.shutdown.complete"})

    async def _start(self) -> None:
        try:
            self.app = await asyncio.to_thread(self._build)
            self._lifespan = asyncio.create_task(self._run_lifespan(self.app), name="lifespan")
            await self._inbox.put({"type": "lifespan.startup"})
            answer = await self._reply()
            if answer["type"] != "lifespan.startup.complete":
                raise StartupFailed(answer.get("message") or "startup failed")
        except Exception as exc:
            if not isinstance(exc, StartupFailed):
                log.error("the server failed to start", exc_info=exc)
            else:
                log.error("the server failed to start: %s", exc)
            self.failed = str(exc) or type(exc).__name__
            self._on_failure()
        finally:
            self._started.set()

    async def _run_lifespan(self, app: ASGIApp) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        try:
            await app(scope, self._inbox.get, self._outbox.put)
        except BaseException as exc:
            # Starlette reports a failed start as a message and raises too: the message is
            # what counts. An app that raised without one fails its start (or stop) here.
            message = f"{type(exc).__name__}: {exc}"
            await self._outbox.put({"type": "lifespan.failed", "message": message})
            if not isinstance(exc, Exception):
                raise

    async def _reply(self) -> Message:
        return await self._outbox.get()

    async def _stop(self) -> None:
        if self._starting is not None:
            await asyncio.shield(self._starting)
        if self._lifespan is None or self._lifespan.done() or self.failed is not None:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        answer = await self._reply()
        if answer["type"] != "lifespan.shutdown.complete":
            log.error("the server did not stop cleanly: %s", answer.get("message"))
        await asyncio.gather(self._lifespan, return_exceptions=True)


async def _answer(send: Send, status: int, body: dict[str, Any], retry_after: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
