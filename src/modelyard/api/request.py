"""Reading a request: JSON body into a wire schema, and noticing a client that went away."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from modelyard.api.errors import from_validation
from modelyard.errors import InvalidRequestError
from modelyard.quantity import parse_duration
from modelyard.scheduler.scheduler import UNSET, Scheduler, Unset

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def scheduler_of(request: Request) -> Scheduler:
    """The app's scheduler (made by the lifespan)."""
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def read_json(request: Request, schema: type[M]) -> tuple[dict[str, Any], M]:
    """The body as a dict (passed on upstream as-is) and validated as ``schema``."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    try:
        return body, schema.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from None


def keep_alive_of(value: str | float | None) -> float | Unset | None:
    if value is None:
        return UNSET
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="keep_alive") from None


class DisconnectWatch:
    """Watches for the client leaving while a handler waits (queue, load, generation)."""

    def __init__(self, request: Request) -> None:
        self._watcher = asyncio.ensure_future(self._disconnected(request))

    @staticmethod
    async def _disconnected(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def guard(self, work: Awaitable[T]) -> T:
        """Awaits ``work``; if the client leaves first, cancels it and raises ``ClientGone``."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, self._watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone

    def close(self) -> None:
        """Stops watching (a streaming response watches for itself)."""
        self._watcher.cancel()
