#!/usr/bin/env python3
"""B13 warm swap: the next turn of a ~3,000-token conversation on the demo model
(Gemma-3-270M) after the model was unloaded and loaded again, with its saved conversation
restored, against the same without a restore (the states deleted first) and against never
swapped; time to first token, streamed, in interleaved rounds of one run. Also: what
llama.cpp's ``--swa-full`` (the sliding-window layers' cache kept for the whole context)
would cost in memory (from the GGUF's header), which warm swaps on this model do not need.

    .venv/bin/python bench/warm_swap.py [--rounds 3 --sentences 230]
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
from common import Gateway
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


def main(rounds: int, sentences: int) -> None:
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

    def median(kind: str) -> float:
        return statistics.median(t for t, _, _ in results[kind])

    print(f"B13 next turn of a {results['cold'][0][1]}-token conversation, {rounds} rounds")
    for kind, label in (("never", "never swapped"), ("restore", "swapped, restored"),
                        ("cold", "swapped, no restore")):  # fmt: skip
        _, read, reused = results[kind][-1]
        load = f", load {statistics.median(loads[kind]):.2f} s" if kind in loads else ""
        print(f"  {label:22} TTFT {median(kind):6.3f} s (read {read}, reused {reused}{load})")
    print(f"  with restore / without:  {median('restore') / median('cold'):.3f} (target <= 0.2)")
    print(f"  with restore / never:    {median('restore') / median('never'):.3f} (target <= 1.5)")
    info = gguf_info(ModelSpec(name="gemma", path=gemma()))
    plain, full = kv_cache_bytes(info, 4096, 1), kv_cache_bytes(_NoWindow(info), 4096, 1)
    print(f"  --swa-full would take the KV cache from {plain / 1024**2:.0f} to "
          f"{full / 1024**2:.0f} MiB per 4,096-token slot; warm swaps do not need it")  # fmt: skip


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
    main(args.rounds, args.sentences)
