#!/usr/bin/env python3
"""B13 warm swap: the next turn of a ~3,000-token conversation on the demo model
(Gemma-3-270M) after the model was unloaded and loaded again, with its saved conversation
restored, against the same without a restore (the states deleted first) and against never
swapped; time to first token, streamed, in interleaved rounds of one run. Also: what
llama.cpp's ``--swa-full`` (the sliding-window layers' cache kept for the whole context)
would cost in memory (from the GGUF's header), which warm swaps on this model do not need.

    .venv/bin/python bench/warm_swap.py [--rounds 3 --sentences 230]

or as ``bench/run.py b13`` (``--swaps`` rounds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from typing import Any

import httpx

from chat import gemma
from common import Gateway, Row, print_table
from modelyard.catalog.gguf import gguf_info, kv_cache_bytes
from modelyard.catalog.spec import ModelSpec

CONFIG = """
[server]
kv_cache_disk = "4GiB"

[models.gemma]
path = "{path}"
chat_template = "gemma"
ctx = 4096
parallel = 1
keep_alive = -1
"""


def next_turn(client: httpx.Client, messages: list[dict[str, str]]) -> tuple[float, int, int]:
    """Time to the first token of the answer, and the engine's prompt counts (read, reused)."""
    body = {
        "model": "gemma",
        "messages": messages,
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = None
    timings: dict[str, Any] = {}
    with client.stream("POST", "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("choices"):
                ttft = time.perf_counter() - started
            timings = chunk.get("timings") or timings
    assert ttft is not None
    return ttft, int(timings.get("prompt_n", 0)), int(timings.get("cache_n", 0))


def swap(client: httpx.Client, gateway: Gateway, restore: bool) -> float:
    """Unloads and loads the model again (its states deleted in between, unless
    ``restore``); the seconds the load took."""
    assert client.post("/api/unload", json={"model": "gemma"}).status_code == 200
    if not restore:
        shutil.rmtree(gateway.home / "kv", ignore_errors=True)
    started = time.perf_counter()
    assert client.post("/api/load", json={"model": "gemma"}, timeout=300).status_code == 200
    return time.perf_counter() - started


def b13(rounds: int, sentences: int) -> dict[str, Any]:
    """The scenario, as ``run.py b13`` reports it."""
    gateway = Gateway(CONFIG.format(path=gemma()), core=None)
    text = " ".join(
        f"Sentence number {i} talks about the weather in town {i % 17}." for i in range(sentences)
    )
    messages = [{"role": "user", "content": text + "\nSummarise."}]
    results: dict[str, list[tuple[float, int, int]]] = {"never": [], "restore": [], "cold": []}
    loads: dict[str, list[float]] = {"restore": [], "cold": []}
    try:
        with httpx.Client(base_url=gateway.url, timeout=600) as client:
            first = client.post(
                "/v1/chat/completions",
                json={"model": "gemma", "messages": messages, "max_tokens": 16, "temperature": 0},
            ).json()
            messages += [
                {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                {"role": "user", "content": "Which town is mentioned most?"},
            ]
            next_turn(client, messages)  # the slot now holds the turn measured
            for _ in range(rounds):
                results["never"].append(next_turn(client, messages))
                loads["restore"].append(swap(client, gateway, restore=True))
                results["restore"].append(next_turn(client, messages))
                loads["cold"].append(swap(client, gateway, restore=False))
                results["cold"].append(next_turn(client, messages))
    finally:
        gateway.close()
    ttft = {kind: statistics.median(t for t, _, _ in runs) for kind, runs in results.items()}
    _, read, reused = results["restore"][-1]
    info = gguf_info(ModelSpec(name="gemma", path=gemma()))
    plain, full = kv_cache_bytes(info, 4096, 1), kv_cache_bytes(_NoWindow(info), 4096, 1)
    with_restore = ttft["restore"] / ttft["cold"]
    vs_never = ttft["restore"] / ttft["never"]
    rows = [
        Row("B13 TTFT s, restored / not", ttft["restore"], ttft["cold"], with_restore,
            "≤ 0.2", with_restore <= 0.2),
        Row("B13 TTFT s, restored / never swapped", ttft["restore"], ttft["never"], vs_never,
            "≤ 1.5", vs_never <= 1.5),
        Row("B13 prompt tokens reused / read", reused, read + reused, reused / (read + reused),
            "", None),
        Row("B13 load s, restore / none", statistics.median(loads["restore"]),
            statistics.median(loads["cold"]),
            statistics.median(loads["restore"]) / statistics.median(loads["cold"]), "", None),
        Row("B13 KV MiB per 4,096-token slot, --swa-full / not", full / 1024**2,
            plain / 1024**2, full / plain, "", None),
    ]  # fmt: skip
    return {"scenario": "B13", "ttft_s": ttft, "tokens": results["cold"][0][1], "rows": rows}


class _NoWindow:
    """A GGUF's metadata as ``--swa-full`` sees it: every layer keeps the whole context."""

    def __init__(self, info: Any) -> None:
        self._info = info

    def arch_value(self, key: str, default: Any = None) -> Any:
        if key.startswith("attention.sliding_window"):
            return 0
        return self._info.arch_value(key, default)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=230)
    args = parser.parse_args()
    result = b13(args.rounds, args.sentences)
    print(f"B13 next turn of a {result['tokens']}-token conversation, {args.rounds} rounds")
    print_table(result["rows"])
