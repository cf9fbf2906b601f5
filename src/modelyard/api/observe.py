"""What an operator looks at: ``/metrics``, the event log, logs, recent requests, the machine.

History comes as JSON; with ``follow=true`` the same as server-sent events that go on
live (``event:`` names the kind, ``id:`` the event id, so a client that reconnects with
``Last-Event-ID`` misses nothing the server still keeps). A follower that stops reading
is dropped after a bounded backlog (``modelyard.feed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from modelyard.api.request import config_of, scheduler_of, time_param
from modelyard.api.telemetry import Telemetry, Trace
from modelyard.cluster.members import Cluster, Node
from modelyard.errors import InvalidRequestError, ModelNotFoundError, NotFoundError
from modelyard.feed import Feed
from modelyard.logbook import GATEWAY, follow, log_path, tail
from modelyard.runners.gpu import Gpu, Gpus
from modelyard.scheduler.journal import Entry, matches

router = APIRouter()

T = TypeVar("T")

_EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"
"""The text format every Prometheus reads (``generate_latest`` writes it)."""
_MAX_LINES = 10_000
_LAGGED = b'event: lagged\ndata: {"message": "this follower fell behind and was dropped"}\n\n'
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _telemetry(request: Request) -> Telemetry:
    telemetry: Telemetry = request.app.state.telemetry
    return telemetry


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """The Prometheus exposition (404 when ``metrics = false``)."""
    telemetry = _telemetry(request)
    if telemetry.metrics is None:
        raise NotFoundError("Metrics are off ([server] metrics = false)")
    body = await telemetry.metrics.render(request.app.state.upstream.session)
    return Response(body, media_type=_EXPOSITION)


# ---- events -------------------------------------------------------------------------------


@router.get("/api/events", response_model=None)
async def events(
    request: Request,
    since: str | None = None,
    model: str | None = None,
    follow: bool = False,
) -> dict[str, Any] | Response:
    """The scheduler's decisions, oldest first: from ``since`` (ISO 8601 time, Unix seconds,
    or a duration back from now such as ``10m``), of ``model`` (and those about every model).
    """
    scheduler = scheduler_of(request)
    name = scheduler.spec(model).name if model else None
    start = time_param(since, "since")
    after = _last_event_id(request)
    journal = scheduler.journal
    if not follow:
        entries = journal.entries(since=start, after=after, model=name)
        return {"events": [e.to_dict() for e in entries], "next": _next_id(entries, after)}

    def keep(entry: Entry) -> bool:
        return matches(entry, since=start, after=after, model=name)

    def encode(entry: Entry) -> bytes:
        data = entry.to_dict()
        return f"id: {entry.id}\nevent: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()

    return _stream(request, journal.feed, keep, encode)


def _next_id(entries: list[Entry], after: int | None) -> int:
    return entries[-1].id if entries else (after or 0)


def _last_event_id(request: Request) -> int | None:
    raw = request.query_params.get("after") or request.headers.get("last-event-id")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError(f"after: not an event id: {raw[:40]!r}", param="after") from None


# ---- activity -----------------------------------------------------------------------------


@router.get("/api/activity", response_model=None)
async def activity(
    request: Request, follow: bool = False, limit: int = 100, every: float = 0.0
) -> dict[str, Any] | Response:
    """The last requests to models, oldest first: model, status, tokens, waits, TTFT.
    Following, ``every`` (seconds, up to 10) sends what came in batches that often rather
    than each request as it ends (a page on a busy server)."""
    if not 0 <= every <= 10:
        raise InvalidRequestError("every: 0 to 10 seconds", param="every")
    feed = _telemetry(request).activity
    if not follow:
        items = feed.items()[-max(0, limit) :] if limit > 0 else []
        return {"requests": [t.to_dict() for t in items]}

    def encode(trace: Trace) -> bytes:
        return f"event: request\ndata: {json.dumps(trace.to_dict())}\n\n".encode()

    return _stream(request, feed, lambda _: True, encode, history=False, every=every)


def _stream(
    request: Request,
    feed: Feed[T],
    keep: Callable[[T], bool],
    encode: Callable[[T], bytes],
    *,
    history: bool = True,
    every: float = 0.0,
) -> StreamingResponse:
    """The kept history that ``keep`` selects, then every new item, as SSE, until the
    server shuts down; with ``every``, new items in one write at most that often."""
    stopping: asyncio.Event = request.app.state.stopping

    async def body() -> AsyncIterator[bytes]:
        stopped = asyncio.ensure_future(stopping.wait())
        getting: asyncio.Future[T | None] | None = None
        try:
            with feed.follow() as follower:
                if history:
                    for item in feed.items():
                        if keep(item):
                            yield encode(item)
                yield b": live\n\n"
                while True:
                    getting = asyncio.ensure_future(follower.get())
                    await asyncio.wait({getting, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    if not getting.done():
                        getting.cancel()
                        return  # shutting down
                    batch = [getting.result()]
                    if every:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(stopped), every)
                        batch += follower.drain()
                    out = b"".join(encode(x) for x in batch if x is not None and keep(x))
                    if out:
                        yield out
                    if any(x is None for x in batch):
                        yield _LAGGED
                        return
        finally:
            stopped.cancel()
            if getting is not None:
                getting.cancel()

    return StreamingResponse(body(), media_type="text/event-stream", headers=_SSE_HEADERS)


# ---- logs ---------------------------------------------------------------------------------


@router.get("/api/logs", response_model=None)
async def gateway_log(request: Request, n: int = 100, follow: bool = False) -> Any:
    """The gateway's own log."""
    return _log(request, GATEWAY, n, follow)


@router.get("/api/logs/{model:path}", response_model=None)
async def model_log(request: Request, model: str, n: int = 100, follow: bool = False) -> Any:
    """What a model's runner printed (its current log file)."""
    try:
        name = scheduler_of(request).spec(model).name
    except ModelNotFoundError:
        if not log_path(_log_dir(request), model).is_file():
            raise
        name = model  # gone from the catalog; its log is still there
    cluster = request.app.state.cluster
    if cluster is not None:
        node = cluster.node_of(scheduler_of(request).running(name))
        if node is not None:  # its runner writes its log on its node
            return await _remote_log(request, cluster, node, name, n, follow)
    return _log(request, name, n, follow)


def _log_dir(request: Request) -> Path:
    home = config_of(request).home
    return home / "logs"


def _log(request: Request, name: str, n: int, following: bool) -> dict[str, Any] | Response:
    if not 0 <= n <= _MAX_LINES:
        raise InvalidRequestError(f"n: between 0 and {_MAX_LINES}", param="n")
    path = log_path(_log_dir(request), name)
    stopping: asyncio.Event = request.app.state.stopping
    try:
        lines, end = tail(path, n)
    except FileNotFoundError:
        lines, end = [], 0
    if not following:
        return {"name": name, "path": str(path), "lines": lines}

    async def body() -> AsyncIterator[bytes]:
        for line in lines:
            yield f"data: {json.dumps(line)}\n\n".encode()
        yield b": live\n\n"
        async for line in follow(path, end, stopping):
            yield f"data: {json.dumps(line)}\n\n".encode()

    return StreamingResponse(body(), media_type="text/event-stream", headers=_SSE_HEADERS)


async def _remote_log(
    request: Request, cluster: Cluster, node: Node, name: str, n: int, following: bool
) -> dict[str, Any] | Response:
    if not 0 <= n <= _MAX_LINES:
        raise InvalidRequestError(f"n: between 0 and {_MAX_LINES}", param="n")
    lines, end = await cluster.log(node, name, n)
    if not following:
        return {"name": name, "path": f"{node.name}:{name}", "lines": lines}
    stopping: asyncio.Event = request.app.state.stopping

    async def body() -> AsyncIterator[bytes]:
        for line in lines:
            yield f"data: {json.dumps(line)}\n\n".encode()
        yield b": live\n\n"
        async for line in cluster.follow_log(node, name, end, stopping):
            yield f"data: {json.dumps(line)}\n\n".encode()

    return StreamingResponse(body(), media_type="text/event-stream", headers=_SSE_HEADERS)


# ---- the machine --------------------------------------------------------------------------


@router.get("/api/system")
async def system(request: Request) -> dict[str, Any]:
    """CPU, memory, each model's processes, disk free for models, and GPUs (with NVML)."""
    scheduler = scheduler_of(request)
    runners = {
        f"{s.name}@{index}" if index else s.name: running
        for s in scheduler.status()
        for index, running in scheduler.runners(s.name).items()
    }
    models_dir = config_of(request).models_dir
    gpus: Gpus = request.app.state.gpus

    def sample() -> dict[str, Any]:
        memory = psutil.virtual_memory()
        disk: dict[str, Any] | None = None
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(models_dir if models_dir.exists() else models_dir.parent)
            disk = {"path": str(models_dir), "total": usage.total, "free": usage.free}
        return {
            "cpu": {"count": psutil.cpu_count(), "percent": psutil.cpu_percent(interval=None)},
            "memory": {"total": memory.total, "available": memory.available},
            "models": [
                {"name": name, "pid": getattr(r, "pid", None), "memory": r.footprint()}
                for name, r in runners.items()
            ],
            "disk": disk,
            "gpus": [_gpu(g) for g in gpus.devices()],
        }

    return await asyncio.to_thread(sample)


def _gpu(gpu: Gpu) -> dict[str, Any]:
    free = gpu.total - gpu.used
    memory = {"total": gpu.total, "used": gpu.used, "free": free}
    return {"index": gpu.index, "name": gpu.name, "memory": memory, "utilization": gpu.utilization}
