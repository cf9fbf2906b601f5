"""What every scenario shares: processes on loopback, the gateway, interleaved rounds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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


def wait_http(url: str, limit: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


class Gateway:
    """``modelyard serve`` on a config of ours, in a temporary home."""

    def __init__(self, config: str, core: int | None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
        (self.home / "modelyard.toml").write_text(config)
        self.port = free_port()
        env = {**os.environ, "MODELYARD_HOME": str(self.home)}
        env["PATH"] = f"{Path(PY).parent}:{env.get('PATH', '')}"
        argv = [PY, "-m", "modelyard", "serve", "--port", str(self.port)]
        argv += ["--config", str(self.home / "modelyard.toml")]
        self.process = subprocess.Popen(
            pinned(argv, core), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/health")

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.process.pid).cpu_times()
        return float(t.user + t.system)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        shutil.rmtree(self.home, ignore_errors=True)


def spawn(argv: list[str], url: str, core: int | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        pinned(argv, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_http(url + "/health")
    return process


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
