"""What every scenario shares: processes on loopback, the gateway, interleaved rounds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


def free_port() -> int:
    from modelyard.runners.process import free_port as pick

    return pick()


def pinned(argv: list[str], core: int | None) -> list[str]:
    if core is None or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return argv
    return ["taskset", "-c", str(core), *argv]


def wait_http(url: str, limit: float = 60, pause: float = 0.05) -> None:
    import urllib.request

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(pause)
    raise RuntimeError(f"{url} did not answer")


def wait_started(url: str, limit: float = 60) -> None:
    """Waits until the gateway at ``url`` has started its app (its port listens before)."""
    import json
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=1):
                return  # 200: ready
        except urllib.error.HTTPError as e:
            if json.loads(e.read())["status"] != "starting":
                return  # 503 loading: started, preloading models
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{url} did not start")


class Gateway:
    """``modelyard serve`` on a config of ours, in a temporary home; its output goes to
    ``gateway.log`` there, and ``BENCH_KEEP=1`` keeps the home (logs included) afterwards."""

    def __init__(self, config: str, core: int | None, env: dict[str, str] | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
        (self.home / "modelyard.toml").write_text(config)
        self.port = free_port()
        # Only the models of ``config``: no demo models to assemble at each start.
        env = {"MODELYARD_DEMO": "false", **os.environ, **(env or {})}
        env["MODELYARD_HOME"] = str(self.home)
        env["PATH"] = f"{Path(PY).parent}:{env.get('PATH', '')}"
        argv = [PY, "-m", "modelyard", "serve", "--port", str(self.port)]
        argv += ["--config", str(self.home / "modelyard.toml")]
        self.log = open(self.home / "gateway.log", "wb")  # noqa: SIM115
        started = time.perf_counter()
        self.process = subprocess.Popen(
            pinned(argv, core), env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers: dict[str, str] = {}
        """Sent with every request of the scenarios (an API key)."""
        self.admin: dict[str, str] = {}
        """An admin's key, where keys are required."""
        wait_http(self.url + "/health", pause=0.005)
        self.health_s = time.perf_counter() - started
        """Seconds from its start to its first answer to ``/health``."""
        wait_started(self.url)
        self.started_s = time.perf_counter() - started
        """… and until its app had started (its accounts, its scheduler)."""

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def pin_runners(self, core: int) -> None:
        """Moves the runners this gateway started (they inherit its core) to ``core``: the
        engine on a core of its own, as BENCH.md pins it, and as a scenario's direct side
        runs it."""
        if (os.cpu_count() or 1) < 2:
            return
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error, OSError):
                os.sched_setaffinity(child.pid, {core})

    def close(self) -> None:
        self.process.terminate()
        try:
            # Its shutdown_timeout (10 s) and its runners' stop, on a machine the bench keeps busy.
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            print(f"gateway on port {self.port} did not stop within 60 s of SIGTERM: killed "
                  f"(its log: {self.home / 'gateway.log'})", file=sys.stderr)  # fmt: skip
            os.environ["BENCH_KEEP"] = "1"  # keep that log
        self.log.close()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(self.home, ignore_errors=True)


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """CPU time of a process (with ``tree``, of its children too), to the nanosecond: the sum
    of the scheduler's own figure for each of its threads (``/proc/PID/task/*/schedstat``).
    ``cpu_times`` counts 10 ms ticks, 33 µs a request over B1's 300 requests: the gateway
    read 467, 500 or 533 µs, and its ratio to the hop moved by a tenth from the ticks alone.
    A thread that ends between two readings takes its time with it; the processes measured
    keep theirs. Where the kernel keeps no such figure, ``cpu_times``."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if tree else [root]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            total += _schedstat_seconds(proc.pid)
        except OSError:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    return total


def _schedstat_seconds(pid: int) -> float:
    nanoseconds = 0
    tasks = f"/proc/{pid}/task"
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/schedstat", "rb") as f:
                nanoseconds += int(f.read().split()[0])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return nanoseconds / 1e9


def spawn(argv: list[str], url: str, core: int | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        pinned(argv, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_http(url + "/health")
    return process


def bare_hop(
    upstream: str, route: str = "/v1/chat/completions", core: int | None = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """The bare aiohttp hop (``hop.py``) passing ``route`` on to ``upstream``, started; its
    process and the URL it serves ``route`` at."""
    port = free_port()
    argv = [PY, str(HERE / "hop.py"), "--port", str(port), "--route", route]
    process = spawn([*argv, "--upstream", upstream], f"http://127.0.0.1:{port}", core=core)
    return process, f"http://127.0.0.1:{port}{route}"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def interleave(
    rounds: int, a: Callable[[], Awaitable[Any]], b: Callable[[], Awaitable[Any]]
) -> tuple[list[Any], list[Any]]:
    """A B B A A B …: each side runs first in half the rounds."""
    ra, rb = [], []
    for i in range(rounds):
        order = [(a, ra), (b, rb)] if i % 2 == 0 else [(b, rb), (a, ra)]
        for fn, out in order:
            out.append(await fn())
    return ra, rb


@dataclass(frozen=True)
class Row:
    """One line of the table: modelyard's figure, the peer's, and what the target judges."""

    label: str
    value: float
    """modelyard's figure (throughput, latency …)."""
    peer: float | None
    """The same figure for the peer or the engine direct; ``None`` where there is none."""
    ratio: float
    """What the target applies to: value / peer, or for latencies value - peer."""
    target: str
    met: bool | None
    """``None``: no target for this line."""


def ratio_row(label: str, result: dict[str, float], target: float | None) -> Row:
    """A row from ``compare``'s result (median figures and the median per-round ratio)."""
    met = None if target is None else result["ratio"] >= target
    shown = f"≥ {target}" if target is not None else "-"
    return Row(label, result["modelyard"], result["peer"], result["ratio"], shown, met)


def print_table(rows: list[Row]) -> None:
    print(f"{'scenario':46s} {'modelyard':>10s} {'peer':>10s} {'ratio':>8s}  target")
    for r in rows:
        peer = f"{r.peer:10.2f}" if r.peer is not None else f"{'-':>10s}"
        verdict = "" if r.met is None else ("met" if r.met else "MISSED")
        print(f"{r.label:46s} {r.value:10.2f} {peer} {r.ratio:8.3f}  {r.target:8s} {verdict}")


def wait_until(check: Callable[[], bool], limit: float, what: str) -> float:
    """Seconds until ``check()`` holds (an HTTP error counts as not yet); exits past
    ``limit``."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        if time.monotonic() - start > limit:
            raise SystemExit(f"{what}: not after {limit:.0f}s")
        time.sleep(0.02)


def pooled_session(headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    # Idle connections are dropped before the gateway's own 5 s keep-alive ends.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=3), headers=headers
    )


async def sequential(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], n: int
) -> list[float]:
    """Milliseconds of each of ``n`` requests sent one after the other."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url, json=body) as r:
            await r.read()
            assert r.status == 200, r.status
        times.append((time.perf_counter() - t) * 1000)
    return times


async def crowd(
    session: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]], clients: int
) -> float:
    """Requests per second with ``clients`` concurrent clients working through ``bodies``."""
    queue = list(reversed(bodies))

    async def client() -> None:
        while queue:
            body = queue.pop()
            async with session.post(url, json=body) as r:
                await r.read()
                assert r.status == 200, (r.status, await r.text())

    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(bodies) / (time.perf_counter() - t)


async def compare(
    rounds: int, a: Callable[[], Awaitable[float]], b: Callable[[], Awaitable[float]]
) -> dict[str, float]:
    """Interleaved rounds of two throughputs; the ratio is b / a per round, then the median."""
    return compared(*await interleave(rounds, a, b))


def compared(ra: list[float], rb: list[float]) -> dict[str, float]:
    """``compare``'s figures from the rounds' throughputs of both sides."""
    ratios = [y / x for x, y in zip(ra, rb, strict=True)]
    return {
        "peer": statistics.median(ra),
        "modelyard": statistics.median(rb),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def delta_row(label: str, direct: list[float], through: list[float], limit: float) -> Row:
    """Per-round figures of both sides; judged on the median per-round difference."""
    delta = statistics.median(b - a for a, b in zip(direct, through, strict=True))
    value, peer = statistics.median(through), statistics.median(direct)
    return Row(f"{label} (ratio: Δ)", value, peer, delta, f"≤ {limit}", delta <= limit)
