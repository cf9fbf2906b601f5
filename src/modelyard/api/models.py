"""Model management: pull from the hub, show, delete, and reload the catalog.

``POST /api/pull`` streams progress as Ollama does, one JSON object per line
(``{"status": "pulling manifest"}``, ``{"status": "pulling <file>", "digest", "total",
"completed"}``…), ending with ``{"status": "success", ...}`` or ``{"error": "message"}``. A
client that asks for ``Accept: text/event-stream`` (modelyard's CLI and web page) gets the
same as server-sent events with modelyard's status words, ending with ``[DONE]``. With
``"stream": false`` it answers once, when done. A pulled model is in the catalog as soon as
the pull ends. A client that goes away stops the download; the partial files stay and the
next pull resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from modelyard.api.auth import check_model, principal_of
from modelyard.api.ollama import ollama_fields
from modelyard.api.request import documented, read_json, scheduler_of
from modelyard.catalog.details import describe
from modelyard.catalog.summary import summarize
from modelyard.engines import engine_of
from modelyard.errors import (
    ConfigError,
    ConflictError,
    HubError,
    InvalidRequestError,
    ModelyardError,
)
from modelyard.hub import store
from modelyard.hub.api import Hub
from modelyard.hub.pull import Progress, PullCancelledError, PullResult, pull
from modelyard.hub.ref import Reference, parse_reference
from modelyard.protocol.openai import ModelDeleteRequest, ModelPullRequest, ModelShowRequest
from modelyard.reload import Reloader
from modelyard.scheduler import ModelState, Scheduler

router = APIRouter()
log = logging.getLogger(__name__)


def _reloader(request: Request) -> Reloader:
    reloader: Reloader | None = request.app.state.reloader
    if reloader is None:
        raise InvalidRequestError("This server was started without a configuration to reload")
    return reloader


@router.post("/api/reload")
async def reload(request: Request) -> dict[str, Any]:
    """Reads ``modelyard.toml`` and the models directory again, now."""
    try:
        change = await _reloader(request).reload()
    except ConfigError as exc:
        raise InvalidRequestError(
            f"The configuration did not load; the last good catalog stays. {exc.message}"
        ) from None
    return asdict(change)


@router.post("/api/show", openapi_extra=documented(ModelShowRequest))
async def show(request: Request) -> dict[str, Any]:
    _, parsed = await read_json(request, ModelShowRequest)
    scheduler = scheduler_of(request)
    spec = scheduler.spec(parsed.model)
    check_model(principal_of(request), spec)  # a user: its own models only
    summary, details = await asyncio.to_thread(
        lambda: (
            summarize(
                spec,
                lambda: scheduler.estimate(spec.name),
                scheduler.measured(spec.name),
                request.app.state.config.home,
            ),
            describe(spec),
        )
    )
    summary["state"] = scheduler.state(spec.name)
    # Ollama's fields win where the names meet (its clients parse them strictly).
    summary.update(ollama_fields(details))
    summary["parameters"] = "\n".join(
        f"{key:<30} {json.dumps(value)}"
        for key, value in {**spec.defaults, "num_ctx": spec.ctx}.items()
    )
    return summary


@router.delete("/api/delete", openapi_extra=documented(ModelDeleteRequest))
async def delete(request: Request) -> dict[str, Any]:
    """Deletes a pulled model's files; a loaded model only with ``force`` (unloaded first)."""
    _, parsed = await read_json(request, ModelDeleteRequest)
    scheduler = scheduler_of(request)
    reloader = _reloader(request)
    spec = scheduler.spec(parsed.model)
    await asyncio.to_thread(store.pulled, spec)  # may it be deleted at all? before unloading
    state = scheduler.state(spec.name)
    if state is not ModelState.STOPPED and state is not ModelState.FAILED:
        if not parsed.force:
            raise ConflictError(
                f"Model {spec.name!r} is {state}; unload it first, or delete with force "
                "(modelyard rm --force) to unload it now",
                param="model",
            )
        await scheduler.unload(spec.name)
    deleted = await asyncio.to_thread(store.remove, spec, reloader.config.models_dir)
    deleted += await asyncio.to_thread(engine_of(spec).forget, spec, reloader.config.home)
    with contextlib.suppress(ConfigError):
        await reloader.reload()
    return {"model": spec.name, "deleted": [str(p) for p in deleted]}


@router.post("/api/pull", openapi_extra=documented(ModelPullRequest))
async def pull_model(request: Request) -> Response:
    _, parsed = await read_json(request, ModelPullRequest)
    ref = parse_reference(parsed.model)
    reloader = _reloader(request)
    scheduler = scheduler_of(request)
    if not parsed.stream:
        result = await _pull(ref, reloader, threading.Event(), lambda _: None)
        return Response(json.dumps(_success(result, scheduler)), media_type="application/json")
    sse = "text/event-stream" in request.headers.get("accept", "")
    return StreamingResponse(
        _pull_events(ref, reloader, scheduler, _frame if sse else _ollama_line),
        media_type="text/event-stream" if sse else "application/x-ndjson",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _pull_events(
    ref: Reference,
    reloader: Reloader,
    scheduler: Scheduler,
    frame: Callable[[dict[str, Any]], bytes],
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Progress | None] = asyncio.Queue()
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, p)

    task = asyncio.ensure_future(_pull(ref, reloader, cancel, progress))
    # Queued after every progress event: the pull thread reported them before it returned.
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (event := await queue.get()) is not None:
            if event.status != "success":
                yield frame(asdict(event))
        try:
            result = task.result()
        except ModelyardError as exc:
            yield frame(exc.envelope())
        else:
            yield frame(_success(result, scheduler))
        if frame is _frame:
            yield b"data: [DONE]\n\n"
    finally:
        cancel.set()  # the client left: stop the download at the next chunk
        if not task.done():
            with contextlib.suppress(BaseException):
                await task


async def _pull(
    ref: Reference,
    reloader: Reloader,
    cancel: threading.Event,
    progress: Callable[[Progress], None],
) -> PullResult:
    hub = Hub()
    try:
        result = await asyncio.to_thread(
            pull, ref, reloader.config.models_dir, hub, progress, cancel
        )
    except PullCancelledError:
        raise InvalidRequestError("The pull was cancelled") from None
    except ModelyardError:
        raise
    except Exception as exc:
        # A failure the hub adapter did not foresee (the network, a library's own error).
        log.exception("pull of %s failed", ref)
        raise HubError(f"The pull of {ref} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        hub.close()
    with contextlib.suppress(ConfigError):
        await reloader.reload()
    return result


def _success(result: PullResult, scheduler: Scheduler) -> dict[str, Any]:
    try:
        name = scheduler.spec(result.reference).name
    except ModelyardError:
        name = None  # pulled, but the catalog does not serve it (e.g. a causal LM directory)
    return {
        "status": "success",
        "model": result.reference,
        "name": name,
        "path": str(result.path),
        "downloaded": result.downloaded,
        "up_to_date": result.up_to_date,
    }


def _frame(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


_OLLAMA_STATUS = {"resolving": "pulling manifest", "verifying": "verifying sha256 digest"}


def _ollama_line(data: dict[str, Any]) -> bytes:
    """A progress event as Ollama's clients read it."""
    if isinstance(data.get("error"), dict):
        data = {"error": data["error"].get("message", "")}
    elif data.get("status") == "downloading":
        file = data.pop("file", None) or ""
        data = {**data, "status": f"pulling {file}", "digest": file}
    elif data.get("status") in _OLLAMA_STATUS:
        data = {**data, "status": _OLLAMA_STATUS[data["status"]]}
    return json.dumps(data).encode() + b"\n"
