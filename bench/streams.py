#!/usr/bin/env python3
"""B15 concurrency: 512 streams at once through the gateway to the canned responder (two
models of 256 slots; each stream 20 chunks 200 ms apart), against the same 512 straight to
the responder: errors, the gaps between chunks (p50, p99) and the gateway's RSS at its peak.
Then 64 requests queued behind a busy model: the gateway's CPU while they wait, against the
same time with none waiting.

    .venv/bin/python bench/streams.py [--streams 512 --chunks 20 --delay-ms 200 --queued 64]
    .venv/bin/python bench/streams.py --smoke     # 32 streams, 8 queued: it runs end to end
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import threading
import time
from typing import Any

import aiohttp
import psutil

from common import HERE, PY, Gateway, free_port, percentile, spawn

CONFIG = """
[models.canned]
path = "{dummy}"
llama_server = "{responder}"
memory = "1MiB"
parallel = {half}
keep_alive = -1

[models.canned2]
path = "{dummy}"
llama_server = "{responder}"
memory = "1MiB"
parallel = {half}
keep_alive = -1

[models.busy]
path = "{dummy}"
llama_server = "{responder}"
memory = "1MiB"
parallel = 1
max_queue = {queued}
keep_alive = -1
"""


async def one_stream(
    session: aiohttp.ClientSession, url: str, model: str, chunks: int, delay_ms: float
) -> list[float] | None:
    """The gaps (ms) between the chunks of one stream; ``None``: it failed."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": chunks,
        "x_chunks": chunks,
        "x_delay_ms": delay_ms,
    }
    stamps: list[float] = []
    try:
        async with session.post(url, json=body) as r:
            if r.status != 200:
                return None
            async for line in r.content:
                if line.startswith(b"data: {"):
                    stamps.append(time.perf_counter())
    except aiohttp.ClientError:
        return None
    if len(stamps) < chunks:
        return None
    return [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]


async def crowd(url: str, streams: int, chunks: int, delay_ms: float) -> tuple[list[float], int]:
    """``streams`` streams at once: every gap, and how many failed."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Two models of half the slots each (a model runs at most 256 at once).
        results = await asyncio.gather(
            *(
                one_stream(session, url, ("canned", "canned2")[i % 2], chunks, delay_ms)
                for i in range(streams)
            )
        )
    gaps = [g for r in results if r is not None for g in r]
    return gaps, sum(r is None for r in results)


class Peak:
    """The highest RSS of a process, sampled every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.mib = max(self.mib, self._process.memory_info().rss / 2**20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.mib


async def queued_cpu(gateway: Gateway, queued: int, seconds: float) -> tuple[float, float, int]:
    """Gateway CPU (ms per second) over ``seconds`` while one slow stream runs on ``busy``,
    with none and then ``queued`` requests waiting behind it; and how many were refused."""
    url = f"{gateway.url}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        chunks = int(seconds * 2 * 1000 / 100) + 20
        cpu = []
        refused = 0
        for waiting in (0, queued):
            head = asyncio.ensure_future(one_stream(session, url, "busy", chunks, 100))
            await asyncio.sleep(0.5)
            tails = [
                asyncio.ensure_future(one_stream(session, url, "busy", 1, 0))
                for _ in range(waiting)
            ]
            await asyncio.sleep(0.5)
            before = gateway.cpu_seconds()
            await asyncio.sleep(seconds)
            cpu.append((gateway.cpu_seconds() - before) / seconds * 1000)
            head.cancel()
            results = await asyncio.gather(*tails, return_exceptions=True)
            refused += sum(r is None or isinstance(r, BaseException) for r in results)
            await asyncio.gather(head, return_exceptions=True)
    return cpu[0], cpu[1], refused


async def main(streams: int, chunks: int, delay_ms: float, queued: int, wait: float) -> None:
    import tempfile
    from pathlib import Path

    dummy = Path(tempfile.mkdtemp()) / "canned.gguf"
    dummy.write_bytes(b"GGUF")
    port = free_port()
    responder = spawn([PY, str(HERE / "responder.py"), "--port", str(port)],
                      f"http://127.0.0.1:{port}")  # fmt: skip
    config = CONFIG.format(dummy=dummy, responder=HERE / "responder.py", half=(streams + 1) // 2,
                           queued=queued)  # fmt: skip
    try:
        gateway = Gateway(config, core=None)
    except BaseException:
        responder.terminate()
        raise
    try:
        through = f"{gateway.url}/v1/chat/completions"
        direct = f"http://127.0.0.1:{port}/v1/chat/completions"
        await crowd(through, 8, 2, 0)  # loads the model
        idle = psutil.Process(gateway.process.pid).memory_info().rss / 2**20
        gaps_direct, failed_direct = await crowd(direct, streams, chunks, delay_ms)
        peak = Peak(gateway.process.pid)
        gaps, failed = await crowd(through, streams, chunks, delay_ms)
        rss = peak.stop()
        none, some, refused = await queued_cpu(gateway, queued, wait)
    finally:
        gateway.close()
        responder.terminate()
        responder.wait()
    p50 = percentile(gaps, 50), percentile(gaps_direct, 50)
    p99 = percentile(gaps, 99), percentile(gaps_direct, 99)
    print(f"B15 {streams} streams at once, {chunks} chunks {delay_ms:g} ms apart")
    print(f"  failed streams: through {failed}, direct {failed_direct} (target 0)")
    print(f"  gap p50 ms: through {p50[0]:.2f}, direct {p50[1]:.2f}")
    print(f"  gap p99 ms: through {p99[0]:.2f}, direct {p99[1]:.2f}, "
          f"added {p99[0] - p99[1]:+.2f} (target <= 5)")  # fmt: skip
    print(f"  gateway RSS: idle {idle:.0f} MiB, peak {rss:.0f} MiB (target <= 250)")
    print(f"B15 {queued} requests queued behind a busy model, {wait:g} s")
    print(f"  gateway CPU ms/s: none waiting {none:.1f}, {queued} waiting {some:.1f}, "
          f"added {some - none:+.1f}; refused {refused}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=200.0)
    parser.add_argument("--queued", type=int, default=64)
    parser.add_argument("--wait", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true")
    args: Any = parser.parse_args()
    if args.smoke:
        args.streams, args.chunks, args.delay_ms, args.queued, args.wait = 32, 5, 20.0, 8, 1.0
    asyncio.run(main(args.streams, args.chunks, args.delay_ms, args.queued, args.wait))
