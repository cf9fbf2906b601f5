#!/usr/bin/env python3
"""Replicas (issue 15): the demo chat model (Gemma-3-270M) as two llama.cpp runners of two
slots and one thread each, against one runner of four slots and two threads, through the
same gateway: output tokens/s at 8 concurrent requests, in interleaved rounds of one run.

    .venv/bin/python bench/replicas.py [--rounds 7 --tokens 64 --clients 8]
"""

from __future__ import annotations

import argparse
import asyncio

from chat import gemma, tokens_per_s
from common import Gateway, compare, pooled_session

CONFIG = """
[models.one]
path = "{path}"
chat_template = "gemma"
ctx = 512
parallel = 4
threads = 2
keep_alive = -1

[models.two]
path = "{path}"
chat_template = "gemma"
ctx = 512
parallel = 2
threads = 1
replicas = 2
keep_alive = -1
"""


async def main(rounds: int, tokens: int, clients: int) -> None:
    gateway = Gateway(CONFIG.format(path=gemma()), core=None)
    url = f"{gateway.url}/v1/completions"
    try:
        async with pooled_session() as session:
            for model in ("one", "two"):  # loads both (two's replicas with the first burst)
                for _ in range(2):
                    await tokens_per_s(session, url, model, clients, 8)
            result = await compare(
                rounds,
                lambda: tokens_per_s(session, url, "one", clients, tokens),
                lambda: tokens_per_s(session, url, "two", clients, tokens),
            )
    finally:
        gateway.close()
    print(f"output tok/s at c={clients}, {tokens} tokens per request, {rounds} rounds")
    print(f"  1 runner  x parallel 4, 2 threads: {result['peer']:8.1f}")
    print(f"  2 runners x parallel 2, 1 thread:  {result['modelyard']:8.1f}")
    spread = f"{result['ratio_min']:.3f}-{result['ratio_max']:.3f}"
    print(f"  ratio (2 replicas / 1): {result['ratio']:.3f} (rounds {spread})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.tokens, args.clients))
