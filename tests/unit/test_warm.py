"""Warm swaps' decisions against a stand-in for llama.cpp's slot API (its answers scripted):
what is saved, what is restored, and a setup whose restores spare nothing stops saving.

The real engine does the same end to end in ``tests/integration/test_warm_swaps.py``; a
restore that reports success but spares nothing (llama.cpp issue 26676) cannot be made to
happen there, so it is scripted here.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from modelyard.catalog.spec import ModelSpec
from modelyard.engines.llamacpp.kvstore import KvStore, identity
from modelyard.engines.llamacpp.warm import WarmSlots
from modelyard.runners.base import KvNews
from modelyard.runners.process import free_port

TOKENS = list(range(2, 502))


@dataclass
class Engine:
    """What the stand-in holds and answers."""

    store: KvStore
    cache_n: int = 0
    """What reading a restored state's tokens back reports as taken from the cache."""
    slots: list[dict[str, Any]] = field(default_factory=list)
    restored: list[tuple[int, str]] = field(default_factory=list)


def _write_state(path: Path, tokens: list[int]) -> None:
    values = [-1, 1, len(tokens), *tokens, 0]
    head = struct.pack("<3I", 0x67677371, 4, len(values))
    path.write_bytes(head + struct.pack(f"<{len(values)}i", *values) + b"\1" * 100_000)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[Engine, str]]:
    state = Engine(KvStore(tmp_path / "kv"))
    state.store.root.mkdir()

    async def slots(request: web.Request) -> web.Response:
        return web.json_response(state.slots)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="llamacpp:prompt_tokens_seconds 150.0\n")

    async def slot(request: web.Request) -> web.Response:
        number = int(request.match_info["id"])
        name = (await request.json())["filename"]
        if request.query["action"] == "save":
            _write_state(state.store.root / name, TOKENS)
            return web.json_response({"n_saved": len(TOKENS), "n_written": 1})
        state.restored.append((number, name))
        return web.json_response({"n_restored": len(TOKENS), "n_read": 1})

    async def completion(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["prompt"] == TOKENS
        return web.json_response({"timings": {"cache_n": state.cache_n}})

    app = web.Application()
    app.router.add_get("/slots", slots)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/slots/{id}", slot)
    app.router.add_post("/completion", completion)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _warm(engine: Engine, url: str, tmp_path: Path) -> tuple[WarmSlots, list[KvNews]]:
    model = tmp_path / "m.gguf"
    if not model.exists():
        model.write_bytes(b"GGUF")
    spec = ModelSpec(name="m", path=model, parallel=2)
    warm = WarmSlots(spec, identity(spec), url, {}, engine.store)
    news: list[KvNews] = []
    warm.tell = news.append
    return warm, news


async def test_used_slots_are_saved_and_restored_at_the_next_start(
    engine: tuple[Engine, str], tmp_path: Path
) -> None:
    state, url = engine
    state.slots = [{"id": 0, "id_task": 4, "n_prompt_tokens": 500}, {"id": 1}]  # 1: unused
    state.cache_n = 490
    warm, news = _warm(state, url, tmp_path)
    await warm.save()
    assert [(n.kind, n.states, n.tokens) for n in news] == [("saved", 1, 500)]
    (saved,) = state.store.states()
    assert saved.prompt_tps == 150.0

    warm, news = _warm(state, url, tmp_path)  # the model loads again
    await warm.restore()
    assert state.restored == [(0, f"{saved.key}.bin")]
    assert [(n.kind, n.states) for n in news] == [("restored", 1)]
    assert state.store.reuses(identity(ModelSpec(name="m", path=tmp_path / "m.gguf"))) is True


async def test_a_setup_whose_restore_spares_nothing_stops_saving(
    engine: tuple[Engine, str], tmp_path: Path
) -> None:
    state, url = engine
    state.slots = [{"id": 0, "id_task": 4, "n_prompt_tokens": 500}]
    state.cache_n = 0  # "restored", and then the whole prompt read again
    warm, _ = _warm(state, url, tmp_path)
    await warm.save()
    warm, news = _warm(state, url, tmp_path)
    await warm.restore()
    assert [n.kind for n in news] == ["no_reuse", "restored"]
    assert "spared 0" in news[0].detail
    assert not state.store.states()
    warm, news = _warm(state, url, tmp_path)
    await warm.save()  # no longer saves for this setup
    assert news == []
    assert not list(state.store.root.glob("*.bin"))


async def test_nothing_is_saved_from_short_slots_or_with_no_disk_budget(
    engine: tuple[Engine, str], tmp_path: Path
) -> None:
    state, url = engine
    state.slots = [{"id": 0, "id_task": 4, "n_prompt_tokens": 10}]
    warm, news = _warm(state, url, tmp_path)
    await warm.save()
    state.slots = [{"id": 0, "id_task": 4, "n_prompt_tokens": 500}]
    model = tmp_path / "m.gguf"
    off = ModelSpec(name="m", path=model, kv_cache_disk=0)
    quiet = WarmSlots(off, identity(off), url, {}, state.store)
    await quiet.save()
    await quiet.restore()
    assert news == []
    assert not list(state.store.root.glob("*.bin"))
