"""B2, B3, B12: the gateway's own cost, on the canned responder (BENCH.md).

The responder runs twice from the same program: directly, and as a model's ``llama_server``
behind modelyard, so both sides answer alike and only the gateway differs.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

import peers
from accounts import keyed
from common import (
    HERE,
    PY,
    Gateway,
    Row,
    compare,
    cpu_seconds,
    crowd,
    delta_row,
    free_port,
    interleave,
    percentile,
    pooled_session,
    ratio_row,
    spawn,
)
from observability import canned

BODY = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}


class Canned:
    """The responder directly on one port, and behind a gateway as model ``canned``."""

    def __init__(self, chunks: int | None = None, delay_ms: float = 0.0) -> None:
        # By default the responder's own seven-token answer, at once: llama.cpp's whole
        # answers are gathered from a stream (api.gather), so a paced stream here would make
        # B2 and B12 measure the pace (200 chunks at 5 ms: a second a request), not the gateway.
        flags = ["--delay-ms", str(delay_ms)] + (["--chunks", str(chunks)] if chunks else [])
        self.port = free_port()
        self.responder = spawn(
            [PY, str(HERE / "responder.py"), "--port", str(self.port), *flags],
            f"http://127.0.0.1:{self.port}",
        )
        dummy = Path(tempfile.mkdtemp()) / "canned.gguf"
        dummy.write_bytes(b"GGUF")
        args = ", ".join(f'"{f}"' for f in flags)
        self.gateway = Gateway(
            f'[models.canned]\npath = "{dummy}"\nllama_server = "{HERE / "responder.py"}"\n'
            f'memory = "1MiB"\nparallel = 256\nmax_queue = 256\nkeep_alive = -1\n'
            f"extra_args = [{args}]\n",
            core=None,
        )
        self.direct = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        self.through = f"{self.gateway.url}/v1/chat/completions"

    def close(self) -> None:
        self.gateway.close()
        self.responder.terminate()
        self.responder.wait()


# ---- B2: saturation, closed loop -------------------------------------------------------------


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (LiteLLM may serve from a worker process)."""
    return cpu_seconds(pid, tree=True)


async def b2(rounds: int, requests: int, levels: list[int]) -> dict[str, Any]:
    canned = Canned()
    results: dict[str, dict[str, float]] = {}
    vs_litellm: dict[str, dict[str, float]] = {}
    cpu: dict[str, list[float]] = {}
    """Per side and level: CPU µs the gateway process (tree) spent per request, per round."""
    try:
        async with pooled_session() as session:
            bodies = [BODY] * requests

            async def timed(key: str, seconds: Callable[[], float], url: str, c: int) -> float:
                before = seconds()
                rate = await crowd(session, url, bodies, c)
                spent = seconds() - before
                cpu.setdefault(key, []).append(spent / requests * 1e6)
                return rate

            # The gateway alone: its child, the responder, is the upstream both sides share.
            ours = canned.gateway.cpu_seconds
            await crowd(session, canned.through, bodies[:100], 8)  # starts the model
            await crowd(session, canned.direct, bodies[:100], 8)
            for c in levels:
                results[f"c={c}"] = await compare(
                    rounds,
                    lambda c=c: crowd(session, canned.direct, bodies, c),
                    lambda c=c: timed(f"modelyard c={c}", ours, canned.through, c),
                )
            if peers.available("litellm"):
                proxy = peers.litellm(f"http://127.0.0.1:{canned.port}", "canned")
                proxied = f"{proxy.url}/v1/chat/completions"
                pid = proxy.process.pid
                try:
                    await crowd(session, proxied, bodies[:100], 8)
                    for c in levels:
                        vs_litellm[f"c={c}"] = await compare(
                            rounds,
                            lambda c=c: timed(
                                f"LiteLLM c={c}", lambda: tree_cpu_seconds(pid), proxied, c
                            ),
                            lambda c=c: crowd(session, canned.through, bodies, c),
                        )
                finally:
                    proxy.close()
    finally:
        canned.close()
    # crowd() asserts every answer is a 200: reaching here means 0 errors.
    rows = [ratio_row(f"B2 req/s through/direct {k}", r, None) for k, r in results.items()]
    for k in results:
        label = f"B2 req/s modelyard/LiteLLM {k}"
        if k in vs_litellm:
            rows.append(ratio_row(label, vs_litellm[k], 2.0))
        else:
            rows.append(peers.not_judged(label, results[k]["modelyard"], "litellm"))
    for k in results:
        mine = statistics.median(cpu[f"modelyard {k}"])
        other = cpu.get(f"LiteLLM {k}")
        peer_cpu = statistics.median(other) if other else None
        share = mine / peer_cpu if peer_cpu else float("nan")
        target = "-" if other else f"not judged: {peers.status('litellm')}"
        rows.append(
            Row(f"B2 gateway CPU µs/request vs LiteLLM {k}", mine, peer_cpu, share, target, None)
        )
    return {
        "scenario": "B2",
        "cpu_us_per_request": cpu,
        "levels": results,
        "vs_litellm": vs_litellm,
        "errors": 0,
        "rows": rows,
    }


# ---- B3: SSE relay ---------------------------------------------------------------------------


async def stream_once(session: aiohttp.ClientSession, url: str) -> tuple[float, list[float], int]:
    """TTFT (ms), the gaps between events (ms) and how many data events arrived."""
    body = {**BODY, "stream": True}
    started = time.perf_counter()
    stamps: list[float] = []
    async with session.post(url, json=body) as r:
        assert r.status == 200, r.status
        async for line in r.content:
            if line.startswith(b"data: {"):
                stamps.append(time.perf_counter())
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
    return (stamps[0] - started) * 1000, gaps, len(stamps)


async def b3(rounds: int, streams: int, chunks: int, delay_ms: float) -> dict[str, Any]:
    canned = Canned(chunks, delay_ms)
    try:
        async with pooled_session() as session:

            async def run(url: str) -> tuple[list[float], list[float], list[int]]:
                ttft, gaps, counts = [], [], []
                for _ in range(streams):
                    first, between, n = await stream_once(session, url)
                    ttft.append(first)
                    gaps.extend(between)
                    counts.append(n)
                return ttft, gaps, counts

            await run(canned.through)
            await run(canned.direct)
            direct, via = await interleave(
                rounds, lambda: run(canned.direct), lambda: run(canned.through)
            )
    finally:
        canned.close()
    ttft = [statistics.median(r[0]) for r in direct], [statistics.median(r[0]) for r in via]
    itl = [percentile(r[1], 99) for r in direct], [percentile(r[1], 99) for r in via]
    lost = sum(n != chunks + 1 for r in via for n in r[2])  # + the final chunk (timings)
    rows = [
        delta_row("B3 TTFT ms", *ttft, 2.0),
        delta_row("B3 ITL p99 ms", *itl, 1.0),
        Row(
            "B3 streams with a chunk merged or lost",
            float(lost),
            None,
            float(lost),
            "= 0",
            lost == 0,
        ),
    ]
    return {"scenario": "B3", "chunks": chunks, "delay_ms": delay_ms, "rows": rows}


# ---- B12: footprint --------------------------------------------------------------------------

SETTLE = 2.0


async def b12(requests: int) -> dict[str, Any]:
    """Start-up and footprint of a gateway with every feature on (keys, a balance, the
    ledger, metrics, the access log). Idle RSS is read once the started gateway has been
    left alone for ``SETTLE`` seconds: the moment the app has started holds the start-up's
    threads and their buffers (reported too, not judged)."""
    gateway = keyed(canned(["canned"]), balance=10**14)
    try:
        process = psutil.Process(gateway.process.pid)
        at_start = process.memory_info().rss / 2**20
        await asyncio.sleep(SETTLE)
        idle = process.memory_info().rss / 2**20
        url = f"{gateway.url}/v1/chat/completions"
        async with pooled_session(gateway.headers) as session:
            await crowd(session, url, [BODY] * 500, 8)
            before = process.memory_info().rss / 2**20
            await crowd(session, url, [BODY] * requests, 8)
            after = process.memory_info().rss / 2**20
    finally:
        gateway.close()
    start, growth = gateway.health_s, after - before
    rows = [
        Row("B12 gateway start to /health (s)", start, None, start, "≤ 1.5", start <= 1.5),
        Row("B12 gateway start to its app started (s)", gateway.started_s, None,
            gateway.started_s, "-", None),
        Row("B12 RSS as the app has started (MiB)", at_start, None, at_start, "-", None),
        Row(f"B12 idle RSS, {SETTLE:g} s after (MiB)", idle, None, idle, "≤ 120", idle <= 120),
        Row(f"B12 RSS growth over {requests} requests (MiB)", after, before, growth, "≤ 10",
            growth <= 10),
    ]  # fmt: skip
    return {"scenario": "B12", "rows": rows}
