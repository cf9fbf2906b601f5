"""Two llama.cpp runners of one model (``replicas = 2``) behind one name: the load is shared
between them, each appears in ``ps`` and ``/metrics``, and a runner killed mid-request fails
only its own requests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, gemma

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """
[models.r]
path = "{path}"
chat_template = "gemma"
ctx = 512
parallel = 2
replicas = 2
threads = 1
"""


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., Server]) -> Server:
    server = server_factory(CONFIG.format(path=gemma()))
    assert httpx.post(f"{server.url}/api/load", json={"model": "r"}, timeout=120).is_success
    return server


def replicas(server: Server) -> list[dict[str, Any]]:
    (entry,) = [m for m in server.ps() if m["name"] == "r"]
    found: list[dict[str, Any]] = entry["replicas"]  # type: ignore[assignment]
    return found


def wait_both_ready(server: Server) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = replicas(server)
        if [r["state"] for r in found] == ["ready", "ready"]:
            return found
        time.sleep(0.1)
    raise AssertionError(f"replicas not ready: {replicas(server)}")


def predicted(server: Server) -> dict[str, float]:
    """Tokens each runner generated, from the engines' metrics merged into ``/metrics``."""
    text = httpx.get(f"{server.url}/metrics").text
    pattern = r'llamacpp_tokens_predicted_total\{model="r",replica="(\d)"\} (\S+)'
    return {index: float(value) for index, value in re.findall(pattern, text)}


async def stream(http: httpx.AsyncClient, tokens: int, started: asyncio.Event | None = None) -> str:
    """One streamed completion of exactly ``tokens`` tokens: ``ok``, or the error frame."""
    body = {
        "model": "r",
        "prompt": "Count on and on:",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if started is not None and line.startswith("data: {"):
                started.set()
            if line.startswith("data: ") and '"error"' in line:
                return line
    return "ok"


def test_replicas_share_eight_streams_evenly(server: Server) -> None:
    found = wait_both_ready(server)
    assert len({r["pid"] for r in found}) == 2
    shown = subprocess.run(
        [sys.executable, "-m", "modelyard", "ps", "--url", server.url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"^\s+r@1\s+ready\s+0/2", shown, re.MULTILINE), shown
    assert "each, 2 replicas" in shown
    before = predicted(server)

    async def run() -> tuple[list[str], list[int]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            tasks = [asyncio.create_task(stream(http, 16)) for _ in range(8)]
            busy: list[int] = []
            while not busy or sum(busy) < 4:  # both runners' two slots taken
                await asyncio.sleep(0.05)
                response = await http.get("/api/ps")
                (entry,) = response.json()["models"]
                busy = [r["in_flight"] for r in entry["replicas"]]
            return await asyncio.gather(*tasks), busy

    results, busy = asyncio.run(run())
    assert results == ["ok"] * 8
    assert busy == [2, 2]
    after = predicted(server)
    served = {i: (after[i] - before.get(i, 0)) / 16 for i in ("0", "1")}
    assert sum(served.values()) == 8
    assert abs(served["0"] - served["1"]) <= 1, served


def test_replica_killed_fails_only_its_own_requests(server: Server) -> None:
    found = wait_both_ready(server)
    victim = found[1]["pid"]

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            started = [asyncio.Event() for _ in range(4)]
            tasks = [asyncio.create_task(stream(http, 80, e)) for e in started]
            await asyncio.gather(*(e.wait() for e in started))
            os.kill(victim, signal.SIGKILL)
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert sorted(r == "ok" for r in results) == [False, False, True, True], results
    assert all("model server failed" in r for r in results if r != "ok")
    # The killed runner comes back when requests need it; the model never stopped serving.
    reply = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": "r", "prompt": "Hello", "max_tokens": 3},
        timeout=60,
    )
    assert reply.json()["usage"]["completion_tokens"] == 3
    events = httpx.get(f"{server.url}/api/events", params={"model": "r"}).json()["events"]
    crashes = [e for e in events if e["type"] == "evicted" and e["reason"] == "crash"]
    assert [e["replica"] for e in crashes] == [1]
    assert crashes[0]["message"].startswith("replica 1: ")
