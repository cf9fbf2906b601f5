#!/usr/bin/env python3
"""What a translated route costs (issue 14): B1 (sequential latency, non-streamed, on the
canned responder) through Ollama's ``/api/chat``, Anthropic's ``/v1/messages`` and OpenAI's
``/v1/responses``, each against ``/v1/chat/completions`` on the same gateway, in interleaved
rounds of one run. The target: at most 0.3 ms more at p50.

    .venv/bin/python bench/dialects.py [--rounds 7 --requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from common import Gateway, interleave, percentile, pooled_session, sequential
from observability import BODY, canned

MESSAGES = BODY["messages"]
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "Ollama /api/chat": ("/api/chat", {"model": "canned", "messages": MESSAGES, "stream": False}),
    "Anthropic /v1/messages": (
        "/v1/messages",
        {"model": "canned", "messages": MESSAGES, "max_tokens": 16},
    ),
    "OpenAI /v1/responses": ("/v1/responses", {"model": "canned", "input": "hi"}),
}
TARGET_MS = 0.3


async def main(rounds: int, requests: int) -> None:
    gateway = Gateway(canned(["canned"]), core=0)
    rows = []
    try:
        async with pooled_session() as session:
            chat = f"{gateway.url}/v1/chat/completions"
            await sequential(session, chat, BODY, 50)  # loads the model, fills the pools
            for label, (path, body) in ROUTES.items():
                url = f"{gateway.url}{path}"
                await sequential(session, url, body, 20)

                async def b1(u: str, b: dict[str, Any]) -> float:
                    return percentile(await sequential(session, u, b, requests), 50)

                base, translated = await interleave(
                    rounds, lambda: b1(chat, BODY), lambda u=url, b=body: b1(u, b)
                )
                deltas = [t - c for t, c in zip(translated, base, strict=True)]
                rows.append((label, statistics.median(translated), statistics.median(base),
                             statistics.median(deltas)))  # fmt: skip
    finally:
        gateway.close()
    print(f"{'route':28} {'p50 ms':>8} {'chat p50':>9} {'Δp50 ms':>8}  target ≤ {TARGET_MS}")
    for label, ours, base, delta in rows:
        print(f"{label:28} {ours:8.3f} {base:9.3f} {delta:8.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests))
