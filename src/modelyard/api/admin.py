"""Operator endpoints: health, readiness, what is loaded, load and unload on demand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from modelyard.api.ollama import ps_fields
from modelyard.api.request import documented, iso_time, keep_alive_of, read_json, scheduler_of
from modelyard.catalog.details import describe, ollama_name
from modelyard.engines import engine_of
from modelyard.protocol.openai import ModelLoadRequest, ModelPinRequest, ModelUnloadRequest
from modelyard.scheduler import ModelState, ModelStatus, Scheduler
from modelyard.scheduler.placement import total

router = APIRouter()


def _describe(scheduler: Scheduler, status: ModelStatus) -> dict[str, Any]:
    spec = status.spec
    running = scheduler.running(status.name)
    return {
        "name": status.name,
        "kind": spec.kind,
        "engine": spec.engine,
        "state": status.state,
        "memory": {
            "held": dict(status.held),
            "estimate": dict(status.estimate),
            "measured": dict(status.measured) if status.measured else None,
            "prompt_cache": engine_of(spec).prompt_cache(spec),
            "nodes": {node: dict(held) for node, held in status.held_on.items()},
        },
        "queued": status.queued,
        "in_flight": status.in_flight,
        "parallel": status.parallel,
        "loaded_since": iso_time(status.loaded_since),
        "expires_at": iso_time(status.expires_at),
        "pinned": status.pinned,
        # The pid, not the runner's address: runners answer the gateway alone.
        "pid": getattr(running, "pid", None),
        "last_error": status.last_error,
        "removed": status.removed,
        # A model that may run several runners (``max_replicas``): each that is not stopped.
        "replicas": [
            {
                "index": r.index,
                "state": r.state,
                "in_flight": r.in_flight,
                "loaded_since": iso_time(r.loaded_since),
                "expires_at": iso_time(r.expires_at),
                "pid": r.pid,
                "node": r.node,
            }
            for r in status.replicas
        ],
    }


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    preload = request.app.state.preload
    if preload is not None and not preload.done():
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready"})


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    """Models that are loaded, loading, unloading or failed; each with Ollama's fields too
    (``model``, ``size``, ``size_vram``, ``digest``, ``details``, ``context_length``)."""
    scheduler = scheduler_of(request)
    listed = [s for s in scheduler.status() if s.state is not ModelState.STOPPED]
    described = await asyncio.to_thread(lambda: [describe(s.spec) for s in listed])
    models = []
    for status, details in zip(listed, described, strict=True):
        entry = _describe(scheduler, status)
        # What its runners hold now (all of them; asleep, no GPU), else what one will take.
        footprint = status.held or status.measured or status.estimate
        vram = sum(n for device, n in footprint.items() if device != "ram")
        size = sum(footprint.values())
        entry.update(model=ollama_name(status.spec), **ps_fields(details, size, vram))
        models.append(entry)
    reserved = scheduler.reserved_on()
    nodes = {
        node: {"budget": budget, "reserved": reserved.get(node, {})}
        for node, budget in scheduler.budgets().items()
    }
    return {
        "models": models,
        "memory": {
            # Of every node together (a single machine: its own).
            "budget": total(scheduler.budgets().values()),
            "reserved": scheduler.reserved(),
            "nodes": nodes,  # the same, per node
        },
    }


@router.get("/api/nodes")
async def nodes(request: Request) -> dict[str, Any]:
    """Each node that serves models: this machine (``local``) and, in cluster mode, every
    node that joined (or was lost): its address, budget and use per device, the models
    with runners there, and when it was last heard from."""
    scheduler = scheduler_of(request)
    reserved = scheduler.reserved_on()
    placed: dict[str, list[str]] = {}
    for status in scheduler.status():
        for node in status.held_on:
            placed.setdefault(node, []).append(status.name)
    cluster = request.app.state.cluster
    joined = cluster.nodes if cluster is not None else {}
    config = request.app.state.config
    here = config.cluster_ip or config.host
    found = []
    for node, budget in scheduler.budgets().items():
        member = joined.get(node)
        found.append(
            {
                "name": node,
                "address": member.ip if member is not None else here,
                "state": "alive",
                "budget": budget,
                "reserved": reserved.get(node, {}),
                "models": sorted(placed.get(node, [])),
                "joined_at": iso_time(member.joined_at) if member is not None else None,
                "last_seen": iso_time(member.last_seen) if member is not None else None,
                "error": None,
            }
        )
    for node, (when, reason) in (cluster.lost if cluster is not None else {}).items():
        found.append(
            {
                "name": node,
                "address": None,
                "state": "lost",
                "budget": {},
                "reserved": {},
                "models": [],
                "joined_at": None,
                "last_seen": iso_time(when),
                "error": reason,
            }
        )
    return {
        "cluster": cluster.address if cluster is not None else None,
        "connected": cluster is not None and cluster.connected.is_set(),
        "error": cluster.error if cluster is not None else None,
        "nodes": found,
    }


@router.get("/api/models")
async def models(request: Request) -> dict[str, Any]:
    """The whole catalog, loaded or not."""
    scheduler = scheduler_of(request)
    listed = [status for status in scheduler.status() if not status.removed]
    # Reads each GGUF's header once (cached while the file stays the same).
    warnings = await asyncio.to_thread(lambda: [engine_of(s.spec).warnings(s.spec) for s in listed])
    result = []
    for status, notes in zip(listed, warnings, strict=True):
        spec = status.spec
        entry = _describe(scheduler, status)
        entry.update(
            path=str(spec.path) if spec.path != Path() else None,
            url=spec.url,
            command=list(spec.command) or None,
            aliases=list(spec.aliases),
            ctx=spec.ctx,
            keep_alive=spec.keep_alive,
            preload=spec.preload,
            warnings=notes,
        )
        result.append(entry)
    reloader = request.app.state.reloader
    return {"models": result, "reload_error": reloader.last_error if reloader else None}


@router.post("/api/load", openapi_extra=documented(ModelLoadRequest))
async def load(request: Request) -> dict[str, Any]:
    _, parsed = await read_json(request, ModelLoadRequest)
    scheduler = scheduler_of(request)
    spec = scheduler.spec(parsed.model)
    await scheduler.load(spec.name, keep_alive_of(parsed.keep_alive))
    return {"model": spec.name, "state": scheduler.state(spec.name)}


@router.post("/api/unload", openapi_extra=documented(ModelUnloadRequest))
async def unload(request: Request) -> dict[str, Any]:
    _, parsed = await read_json(request, ModelUnloadRequest)
    scheduler = scheduler_of(request)
    spec = scheduler.spec(parsed.model)
    await scheduler.unload(spec.name)
    return {"model": spec.name, "state": scheduler.state(spec.name)}


@router.post("/api/pin", openapi_extra=documented(ModelPinRequest))
async def pin(request: Request) -> dict[str, Any]:
    """Pins a model (never evicted, never expires) or unpins it (``"pinned": false``)."""
    _, parsed = await read_json(request, ModelPinRequest)
    scheduler = scheduler_of(request)
    spec = scheduler.spec(parsed.model)
    scheduler.pin(spec.name, parsed.pinned)
    return {"model": spec.name, "pinned": parsed.pinned, "state": scheduler.state(spec.name)}
