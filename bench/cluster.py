"""Several machines on Ray, on this one: ``python bench/cluster.py [--rounds 8 --requests 300]``.

The gateway runs ``serve --cluster`` with its head at 127.0.0.2; a node joins at 127.0.0.3
(``modelyard join``). Both serve the canned responder (``responder.py``): ``near`` on the
gateway's machine, ``far`` on the node (their ``memory`` and the budgets decide it). It
reports:

- the added latency of a request to a model on another node against one on the gateway's
  machine (B1's measure: sequential requests, interleaved rounds, median per-round Δp50);
- start-up of ``serve --cluster`` (to ``/health``, and until it is connected to Ray);
- ``join`` until the node is listed, and until its first model answers;
- a node's raylet SIGKILLed: until its model answers again from another node (a second
  node, joined first, has room), a cold load of the responder included;
- RSS of each node's Ray processes, and of the gateway (a Ray driver).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from common import HERE, PY, percentile, pooled_session, sequential, wait_until

HEAD, NODE, SPARE = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def _config(tmp: Path) -> str:
    dummy = tmp / "canned.gguf"
    dummy.write_bytes(b"GGUF")
    server = tmp / "llama-server"  # the responder, run by this interpreter wherever it starts
    server.write_text(f'#!/bin/sh\nexec "{PY}" "{HERE / "responder.py"}" "$@"\n')
    server.chmod(0o755)
    entry = (
        '[models.{name}]\npath = "{dummy}"\nllama_server = "{server}"\n'
        'memory = "{memory}"\nkeep_alive = "1h"\nmax_queue = 1000\n\n'
    )
    return "[memory]\nmin_residency = 0\n\n" + "".join(
        entry.format(name=name, dummy=dummy, server=server, memory=memory)
        for name, memory in (("near", "40MiB"), ("far", "200MiB"))
    )


def _nodes(url: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{url}/api/nodes", timeout=5).json()
    return found


def _alive(url: str) -> set[str]:
    return {n["name"] for n in _nodes(url)["nodes"] if n["state"] == "alive"}


def _join(
    url: str, ip: str, memory: str, tmp: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    home = tmp / f"node-{ip}"
    home.mkdir(exist_ok=True)
    head = _nodes(url)["cluster"]
    found = re.search(r"--token (\S+)", (tmp / "gateway.log").read_text())
    assert found, "serve --cluster printed no token"
    argv = [PY, "-m", "modelyard", "join", head, "--ip", ip, "--memory", memory]
    argv += ["--token", found.group(1)]
    log = (tmp / f"join-{ip}.log").open("wb")
    return subprocess.Popen(
        [*argv, "--home", str(home)], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _where(url: str) -> dict[str, list[str]]:
    """The nodes each loaded model's runners are on."""
    models = httpx.get(f"{url}/api/ps", timeout=5).json()["models"]
    return {m["name"]: sorted(m["memory"]["nodes"]) for m in models}


def _rss(match: str) -> float:
    """MiB of every process whose command line holds ``match``."""
    total = 0
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        line = " ".join(proc.info["cmdline"] or [])
        if match in line and proc.info["memory_info"] is not None:
            total += proc.info["memory_info"].rss
    return total / 2**20


def _chat(url: str, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    if answer.status_code != 200:
        print(f"{model}: {answer.status_code} {answer.text[:300]}", file=sys.stderr)
    return answer.status_code == 200


async def _latency(url: str, rounds: int, requests: int) -> tuple[list[float], list[float]]:
    """Per round, the p50 of ``near`` and of ``far`` (ms), in alternating order."""
    near, far = [], []
    async with pooled_session() as session:
        for i in range(rounds):
            order = [("near", near), ("far", far)] if i % 2 == 0 else [("far", far), ("near", near)]
            for model, out in order:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                times = await sequential(session, f"{url}/v1/chat/completions", body, requests)
                out.append(percentile(times, 50))
    return near, far


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-cluster-bench-"))
    (tmp / "modelyard.toml").write_text(_config(tmp))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_HOME": str(tmp / "home"), "MODELYARD_DEMO": "false"}
    port = 18000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    argv = [PY, "-m", "modelyard", "serve", "-c", str(tmp / "modelyard.toml"), "--port", str(port)]
    argv += ["--memory", "50MiB", "--cluster", "--cluster-ip", HEAD]
    argv += ["--ray-port", str(16380 + os.getpid() % 1000)]
    started = time.monotonic()
    gateway = subprocess.Popen(
        argv, env=env, stdout=(tmp / "gateway.log").open("wb"), stderr=subprocess.STDOUT
    )
    joined: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {}
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 300, "health")
        results["serve --cluster to /health (s)"] = time.monotonic() - started
        wait_until(lambda: _nodes(url)["connected"], 120, "connected")
        results["serve --cluster to connected (s)"] = time.monotonic() - started

        t = time.monotonic()
        joined.append(_join(url, NODE, "220MiB", tmp, env))
        results["join to listed (s)"] = wait_until(lambda: NODE in _alive(url), 240, "join")
        assert _chat(url, "far")
        results["join to first placement answered (s)"] = time.monotonic() - t
        assert _chat(url, "near")
        where = _where(url)
        assert where == {"near": ["local"], "far": [NODE]}, where

        near, far = asyncio.run(_latency(url, args.rounds, args.requests))
        delta = statistics.median(f - n for n, f in zip(near, far, strict=True))
        results["p50 on the gateway's machine (ms)"] = statistics.median(near)
        results["p50 on another node (ms)"] = statistics.median(far)
        results["added p50, another node (ms; target <= 2, aim <= 0.2)"] = delta

        results["RSS of the gateway, a Ray driver (MiB)"] = (
            psutil.Process(gateway.pid).memory_info().rss / 2**20
        )
        results["RSS of the head's Ray processes (MiB)"] = _rss(f"--node-ip-address={HEAD}") + _rss(
            f"node_ip_address={HEAD}"
        )
        results["RSS of a node's Ray processes, with join (MiB)"] = (
            _rss(f"--node-ip-address={NODE}")
            + _rss(f"node_ip_address={NODE}")
            + _rss(f"--ip {NODE}")
        )

        joined.append(_join(url, SPARE, "220MiB", tmp, env))
        wait_until(lambda: SPARE in _alive(url), 240, "second join")
        (raylet,) = [
            p
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "raylet"
            and f"--node_ip_address={NODE}" in " ".join(p.info["cmdline"] or [])
        ]
        raylet.send_signal(signal.SIGKILL)
        t = time.monotonic()
        lost = wait_until(lambda: NODE not in _alive(url), 60, "lost")
        results["raylet killed to the node listed lost (s)"] = lost
        wait_until(lambda: _chat(url, "far") and _where(url)["far"] == [SPARE], 120, "served again")
        results["raylet killed to its model answering from another node (s)"] = time.monotonic() - t
    finally:
        for process in joined:
            process.send_signal(signal.SIGINT)
        for process in joined:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(60)
        except subprocess.TimeoutExpired:
            gateway.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:{width}s} {value:8.2f}")
    print(json.dumps({"rounds": args.rounds, "requests": args.requests}))


if __name__ == "__main__":
    sys.exit(main())
