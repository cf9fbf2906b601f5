#!/usr/bin/env python3
"""What a change costs on the request path: B1 (sequential latency, gateway CPU) and B2
(saturation, c=16) through this checkout's gateway and through the same gateway at another
commit, interleaved rounds in one run, both pinned to the same core.

    .venv/bin/python bench/versus.py BASE [--keys] [--rounds 7 --requests 300 --saturation 1000]
    .venv/bin/python bench/versus.py BASE --relay [--rounds 12]

BASE is any git revision; its ``src`` is checked out into a temporary worktree and put first
on the base gateway's ``PYTHONPATH`` (same virtual environment, same canned responder).
``--keys``: both gateways require keys, and the scenarios' key has a token balance (every
request reserved and settled), as a shared server runs.

``--relay``: B10's pinned relay instead. One Infinity (one thread, core 1) served four ways,
each round in a rotated order: direct, through the bare aiohttp hop, through this checkout's
gateway and through BASE's (each a ``url`` model in front of it; the hop and both gateways on
core 0 with the load generator). Each way's rate ÷ direct in the same round, the median of
the rounds; and this ÷ base.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from accounts import keyed
from common import HERE, PY, ROOT, Gateway, crowd, free_port, pooled_session, spawn
from encoders import bodies, minilm_dir, sentences
from observability import canned, cost_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--saturation", type=int, default=1000)
    parser.add_argument("--keys", action="store_true")
    parser.add_argument("--relay", action="store_true", help="B10's pinned relay instead")
    args = parser.parse_args()
    tree = Path(tempfile.mkdtemp(prefix="modelyard-base-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree),
                    args.base], check=True)  # fmt: skip
    try:
        if args.relay:
            ways = asyncio.run(relay(tree / "src", args.rounds))
            print(f"B10's pinned relay: Infinity served four ways ({args.base} = base)")
            for label, value, low, high in ways:
                print(f"{label:40s} {value:7.3f}   (rounds {low:.3f} to {high:.3f})")
            return
        config = canned(["canned"])
        alone = {"MODELYARD_DEMO": "false"}  # one model in each catalog (older code ignores it)
        older = {**alone, "PYTHONPATH": str(tree / "src")}
        if args.keys:
            this = keyed(config, alone, balance=10**14)
            base = keyed(config, older, balance=10**14)
        else:
            this = Gateway(config, core=0, env=alone)
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


async def relay(
    base_src: Path, rounds: int, requests: int = 256, clients: int = 16
) -> list[tuple[str, float, float, float]]:
    """Rows of (way, its median per-round rate ÷ direct, the lowest and highest round)."""
    import peers

    if (os.cpu_count() or 1) < 2 or not peers.available("infinity"):
        raise SystemExit("--relay needs 2 cores and Infinity (bash bench/setup_peers.sh)")
    model, texts = minilm_dir(), sentences(requests, 6, 14, seed=10)
    port = free_port()
    argv = [*peers.infinity_argv(str(model), "inf", str(port)), "--url-prefix", "/v1"]
    infinity = peers.Peer(argv, "/health", port, 1, **peers.infinity_env(1))
    config = f'[models.inf]\nurl = "{infinity.url}"\nhealth = "/health"\nparallel = 64\n'
    config += 'capabilities = ["embedding"]\n'
    alone = {"MODELYARD_DEMO": "false"}
    os.sched_setaffinity(0, {0})
    hop_port, started = free_port(), []
    hop: subprocess.Popen[bytes] | None = None
    try:
        this = Gateway(config, core=0, env=alone)
        started.append(this)
        base = Gateway(config, core=0, env={**alone, "PYTHONPATH": str(base_src)})
        started.append(base)
        hop_argv = [PY, str(HERE / "hop.py"), "--port", str(hop_port), "--route", "/embeddings"]
        hop_argv += ["--upstream", f"{infinity.url}/v1/embeddings"]
        hop = spawn(hop_argv, f"http://127.0.0.1:{hop_port}", core=0)
        ways = {
            "direct": f"{infinity.url}/v1/embeddings",
            "the bare aiohttp hop": f"http://127.0.0.1:{hop_port}/embeddings",
            "this checkout": f"{this.url}/v1/embeddings",
            "base": f"{base.url}/v1/embeddings",
        }
        rates: dict[str, list[float]] = {way: [] for way in ways}
        work = bodies(texts, "inf")
        async with pooled_session() as session:
            for url in ways.values():
                await crowd(session, url, work[:64], 8)
            names = list(ways)
            for i in range(rounds):
                for way in names[i % 4 :] + names[: i % 4]:
                    rates[way].append(await crowd(session, ways[way], work, clients))
    finally:
        if hop is not None:
            hop.terminate()
            hop.wait()
        for gateway in started:
            gateway.close()
        infinity.close()
    rows = []
    for way, against in [(w, "direct") for w in names[1:]] + [("this checkout", "base")]:
        ratios = [a / b for a, b in zip(rates[way], rates[against], strict=True)]
        label = f"{way} ÷ {against}"
        rows.append((label, statistics.median(ratios), min(ratios), max(ratios)))
    direct = statistics.median(rates["direct"])
    rows.insert(0, ("direct, emb/s (median of rounds)", direct, min(rates["direct"]),
                    max(rates["direct"])))  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
