"""Several gateways, on this machine: ``python bench/gateways.py [--rounds 8 --requests 300]``
(``--smoke``: one round of 20, as the tests run it).

Two ``modelyard serve --gateways`` share a PostgreSQL server (``tests/postgres.py``), keys
required, the canned responder (``responder.py``) as the model. It reports:

- the added latency of a request served by the follower (a lease from the leader, then
  straight to the runner) against one served by the leader itself (B1's measure: sequential
  requests, interleaved rounds, median per-round Δp50), and the same for a key with a rate
  limit (admitted at the leader too);
- the follower's start-up to ``/health``, and until it follows;
- the leader SIGKILLed: until the follower leads and its model answers (a cold load of the
  responder included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from common import HERE, PY, ROOT, percentile, pooled_session, sequential, wait_until


def _config(tmp: Path) -> str:
    dummy = tmp / "canned.gguf"
    dummy.write_bytes(b"GGUF")
    server = tmp / "llama-server"  # the responder, run by this interpreter
    server.write_text(f'#!/bin/sh\nexec "{PY}" "{HERE / "responder.py"}" "$@"\n')
    server.chmod(0o755)
    return (
        "[memory]\nmin_residency = 0\n\n"
        f'[models.canned]\npath = "{dummy}"\nllama_server = "{server}"\n'
        'memory = "40MiB"\nkeep_alive = "1h"\nmax_queue = 1000\n'
    )


def _serve(tmp: Path, name: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    home = tmp / name
    home.mkdir()
    argv = [PY, "-m", "modelyard", "serve", "-c", str(tmp / "modelyard.toml")]
    argv += ["--port", str(port), "--gateways"]
    return subprocess.Popen(
        argv,
        env={**env, "MODELYARD_HOME": str(home)},
        stdout=(tmp / f"{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def _chat(url: str, key: dict[str, str]) -> bool:
    body = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=key, timeout=30).is_success


async def _latency(
    leader: str, follower: str, key: dict[str, str], rounds: int, requests: int
) -> tuple[list[float], list[float]]:
    """Per round, the p50 (ms) through the leader and through the follower, alternating."""
    direct: list[float] = []
    brokered: list[float] = []
    body = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}
    async with pooled_session(key) as session:
        for i in range(rounds):
            order = [(leader, direct), (follower, brokered)]
            for url, out in order if i % 2 == 0 else order[::-1]:
                times = await sequential(session, f"{url}/v1/chat/completions", body, requests)
                out.append(percentile(times, 50))
    return direct, brokered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="one round of 20 (the tests')")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.requests = 1, 20
    sys.path.insert(0, str(ROOT))
    from tests.postgres import PostgresServer

    database = PostgresServer()
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-gateways-bench-"))
    (tmp / "modelyard.toml").write_text(_config(tmp))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_DEMO": "false", "MODELYARD_AUTH": "keys"}
    env["MODELYARD_DATABASE_URL"] = asyncio.run(database.new_database())
    base = 18000 + os.getpid() % 1000
    a, b = f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"
    processes = [_serve(tmp, "a", base, env)]
    results: dict[str, Any] = {}
    try:
        wait_until(lambda: "gateway" in (tmp / "a.log").read_text(), 60, "a leads")
        printed = [
            line.strip()
            for line in (tmp / "a.log").read_text().splitlines()
            if line.strip().startswith("my-")
        ]
        key = {"Authorization": f"Bearer {printed[0]}"}
        started = time.monotonic()
        processes.append(_serve(tmp, "b", base + 1, env))
        wait_until(lambda: httpx.get(f"{b}/health", timeout=1).is_success, 60, "b health")
        results["follower: serve --gateways to /health (s)"] = time.monotonic() - started
        wait_until(lambda: "follows" in (tmp / "b.log").read_text(), 60, "b follows")
        results["follower: serve --gateways to following (s)"] = time.monotonic() - started
        assert _chat(a, key)
        assert _chat(b, key)

        direct, brokered = asyncio.run(_latency(a, b, key, args.rounds, args.requests))
        results["p50 through the leader (ms)"] = statistics.median(direct)
        results["p50 through the follower (ms)"] = statistics.median(brokered)
        results["added p50 through the follower (ms)"] = statistics.median(
            f - d for d, f in zip(direct, brokered, strict=True)
        )
        # A key with a rate limit: a follower admits each of its requests at the leader.
        made = httpx.post(
            f"{a}/api/keys", json={"name": "limited", "rpm": 10**6}, headers=key, timeout=10
        )
        limited = {"Authorization": f"Bearer {made.json()['key']}"}
        direct, brokered = asyncio.run(_latency(a, b, limited, args.rounds, args.requests))
        results["added p50 through the follower, a key with limits (ms)"] = statistics.median(
            f - d for d, f in zip(direct, brokered, strict=True)
        )

        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait()
        killed = time.monotonic()
        wait_until(lambda: _chat(b, key), 120, "b serves after a's death")
        results["leader SIGKILLed to the follower serving (s, cold load included)"] = (
            time.monotonic() - killed
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        database.stop()
    for name, value in results.items():
        print(f"{name:70s} {value:10.3f}")


if __name__ == "__main__":
    main()
