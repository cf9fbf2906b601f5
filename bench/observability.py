"""What watching costs: B1 (sequential latency) and B2 (saturation, c=16) through a gateway
with metrics and the access log on, and through its twin with both off, interleaved rounds in
one run; and how long ``/metrics`` takes with 20 models in the catalog and 3 loaded.

    .venv/bin/python bench/observability.py [--rounds 7 --requests 300 --saturation 1000]

Both gateways serve the canned responder (``responder.py``) as their model, pinned to the
same core, so only the observability differs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import HERE, Gateway, crowd, interleave, percentile, pooled_session, sequential

BODY = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}
OFF = "[server]\nmetrics = false\naccess_log = false\n"


def canned(names: list[str], server: str = "") -> str:
    dummy = Path(tempfile.mkdtemp()) / "canned.gguf"
    dummy.write_bytes(b"GGUF")
    models = "".join(
        f'[models.{name}]\npath = "{dummy}"\nllama_server = "{HERE / "responder.py"}"\n'
        'memory = "1MiB"\nparallel = 64\nmax_queue = 256\nkeep_alive = -1\n'
        for name in names
    )
    return server + models


async def cost(rounds: int, requests: int, saturation: int) -> list[tuple[str, float, float]]:
    on, off = Gateway(canned(["canned"]), core=0), Gateway(canned(["canned"], OFF), core=0)
    return await cost_of(on, off, rounds, requests, saturation)


async def cost_of(
    on: Gateway, off: Gateway, rounds: int, requests: int, saturation: int, names: str = "on/off"
) -> list[tuple[str, float, float]]:
    """B1 and B2 through ``on`` and ``off`` in interleaved rounds (both are closed after);
    rows of (label, ``on``'s figure, ``off``'s or the target)."""
    a, b = names.split("/")
    rows = []
    try:
        async with pooled_session(on.headers) as s_on, pooled_session(off.headers) as s_off:
            sessions = {on: s_on, off: s_off}
            urls = {g: f"{g.url}/v1/chat/completions" for g in (on, off)}
            for g in (on, off):
                await sequential(sessions[g], urls[g], BODY, 50)  # loads the model, fills pools
            cpu: dict[Gateway, list[float]] = {on: [], off: []}

            async def b1(g: Gateway) -> float:
                before = g.cpu_seconds()
                times = await sequential(sessions[g], urls[g], BODY, requests)
                cpu[g].append((g.cpu_seconds() - before) / requests * 1e6)
                return percentile(times, 50)

            p50_off, p50_on = await interleave(rounds, lambda: b1(off), lambda: b1(on))
            bodies = [BODY] * saturation
            rate_off, rate_on = await interleave(
                rounds,
                lambda: crowd(sessions[off], urls[off], bodies, 16),
                lambda: crowd(sessions[on], urls[on], bodies, 16),
            )
    finally:
        on.close()
        off.close()
    deltas = [a - b for a, b in zip(p50_on, p50_off, strict=True)]
    ratios = [a / b for a, b in zip(rate_on, rate_off, strict=True)]
    rows.append((f"B1 p50 ms, {a}", statistics.median(p50_on), statistics.median(p50_off)))
    rows.append((f"B1 Δp50 ms {a} - {b} (median per round)", statistics.median(deltas), 0.1))
    rows.append(
        ("B1 gateway CPU µs/request", statistics.median(cpu[on]), statistics.median(cpu[off]))
    )
    rows.append((f"B2 req/s c=16, {a}", statistics.median(rate_on), statistics.median(rate_off)))
    rows.append((f"B2 req/s {a} / {b} (median per round)", statistics.median(ratios), 0.95))
    return rows


async def scrape_time(scrapes: int) -> list[tuple[str, float, float]]:
    names = [f"m{i:02d}" for i in range(20)]
    gateway = Gateway(canned(names), core=0)
    try:
        async with pooled_session() as session:
            for name in names[:3]:
                async with session.post(
                    f"{gateway.url}/v1/chat/completions", json={**BODY, "model": name}
                ) as r:
                    assert r.status == 200
            times = []
            for _ in range(scrapes):
                t = time.perf_counter()
                async with session.get(f"{gateway.url}/metrics") as r:
                    text = await r.text()
                    assert r.status == 200
                times.append((time.perf_counter() - t) * 1000)
            engines = sum(1 for line in text.splitlines() if line.startswith("llamacpp_requests"))
            assert engines == 3, engines
    finally:
        gateway.close()
    return [
        ("/metrics ms, 20 models, 3 loaded: p50", percentile(times, 50), 50.0),
        ("/metrics ms, 20 models, 3 loaded: p99", percentile(times, 99), 50.0),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--saturation", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=100)
    args = parser.parse_args()
    rows: list[Any] = asyncio.run(cost(args.rounds, args.requests, args.saturation))
    rows += asyncio.run(scrape_time(args.scrapes))
    print(f"{'':50s} {'value':>10s} {'off / target':>13s}")
    for label, value, other in rows:
        print(f"{label:50s} {value:10.3f} {other:13.3f}")


if __name__ == "__main__":
    main()
