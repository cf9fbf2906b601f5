#!/usr/bin/env python3
"""The web page (issue 17): page weight on first load (bytes transferred, gzip), time until
the Models page shows 20 models, requests a minute from an idle open page, and B1 (sequential
latency) with two pages open (Models and Activity, which follow the server) against none,
interleaved rounds in one run. Chromium is the machine's (/usr/bin/chromium).

    .venv/bin/python bench/ui.py [--rounds 7 --requests 300 --idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from playwright.async_api import async_playwright

from common import Gateway, interleave, percentile, pooled_session, sequential
from observability import BODY, canned

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip


async def main(rounds: int, requests: int, idle: float) -> None:
    names = [f"m{i:02d}" for i in range(20)]
    gateway = Gateway(canned(["canned", *names]), core=0)
    rows: list[tuple[str, float]] = []
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=ARGS
            )
            page = await browser.new_page()
            transferred: list[int] = []

            async def count(response: object) -> None:
                try:
                    sizes = await response.request.sizes()  # type: ignore[attr-defined]
                except Exception:  # a stream still open when the page closed
                    return
                transferred.append(sizes["responseBodySize"] + sizes["responseHeadersSize"])

            counting: set[asyncio.Future[None]] = set()

            def on_response(response: object) -> None:
                task = asyncio.ensure_future(count(response))
                counting.add(task)
                task.add_done_callback(counting.discard)

            page.on("response", on_response)
            started = time.perf_counter()
            await page.goto(f"{gateway.url}/ui/")
            await page.wait_for_function("document.querySelectorAll('tr[data-model]').length >= 21")
            rows.append(("Models page with 21 models: ms to shown (from navigation)",
                         (time.perf_counter() - started) * 1000))  # fmt: skip
            await page.wait_for_timeout(1500)
            page.remove_listener("response", on_response)
            rows.append(("first load: bytes transferred (gzip)", sum(transferred)))
            rows.append(("first load: requests", len(transferred)))
            sent: list[str] = []
            page.on("request", lambda r: sent.append(r.url))
            await page.wait_for_timeout(idle * 1000)
            rows.append(("idle Models page: requests a minute", len(sent) * 60 / idle))
            await page.close()

            url = f"{gateway.url}/v1/chat/completions"
            async with pooled_session() as session:
                await sequential(session, url, BODY, 50)
                for shown in (("#/models", "#/events"), ("#/models", "#/activity")):

                    async def closed() -> float:
                        return percentile(await sequential(session, url, BODY, requests), 50)

                    async def opened(shown: tuple[str, ...] = shown) -> float:
                        pages = []
                        for path in shown:
                            pages.append(p := await browser.new_page())
                            await p.goto(f"{gateway.url}/ui/{path}")
                        await asyncio.sleep(1.0)
                        try:
                            return percentile(await sequential(session, url, BODY, requests), 50)
                        finally:
                            for p in pages:
                                await p.close()

                    none, two = await interleave(rounds, closed, opened)
                    deltas = [b - a for a, b in zip(none, two, strict=True)]
                    label = " and ".join(p[2:] for p in shown)
                    rows.append((f"B1 p50 ms, no page open / {label}", statistics.median(none)))
                    rows.append((f"B1 p50 ms, {label} open", statistics.median(two)))
                    rows.append((f"B1 delta p50 ms, {label} open - none (median per round)",
                                 statistics.median(deltas)))  # fmt: skip
            await browser.close()
    finally:
        gateway.close()
    for label, value in rows:
        print(f"{label:60s} {value:12.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests, args.idle))
