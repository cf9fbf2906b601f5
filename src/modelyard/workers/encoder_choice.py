"""``backend = "auto"``: the encoder's backend chosen by its measured speed on this machine.

ONNX Runtime costs less per call (a lone short text), torch gains more from full batches and
long inputs; which one serves a model faster depends on the model, the CPU and the threads.
So ``auto`` times both on one fixed probe (``PROBE``: batches of the sizes and lengths a
loaded worker runs) and keeps the faster. The probe weighs batches by what they cost, so
long and full batches, where most of a busy worker's time goes, decide.

The choice is remembered in the cache directory, keyed by everything it depends on (the
model's files, the kind, the threads, the CPU, the library versions): the next load of the
same model on the same machine loads only the chosen backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger("modelyard.encoder")

PROBE: tuple[tuple[int, int], ...] = ((1, 12), (16, 12), (16, 100), (16, 200))
"""(inputs, words) of each probe batch: a lone sentence, a full batch of sentences,
paragraphs and documents (the model's own limit cuts what is longer than it reads)."""
_PASSES = 2
"""Timed passes over the probe after one untimed (the first calls of a session allocate);
each batch counts its fastest pass."""
_SLOW_PASS = 1.0
"""Seconds: a model whose untimed pass took longer is timed once (a large model on a small
CPU; its load is not to wait a minute for a choice)."""
_VERSION = 1
"""Part of the remembered choice's key: a change to the probe or the rule measures again."""

_TEXT = (
    "the river carries bright stones under an ancient bridge while small owls read maps "
    "of quiet cities near the glacier and a violin opens the market at dawn"
)
_WORDS = _TEXT.split(" ")


@dataclass(frozen=True)
class Choice:
    backend: str
    seconds: dict[str, float]
    """Each backend's time for the probe; empty when the choice was remembered."""


def faster(seconds: dict[str, float]) -> str:
    """The backend that served the probe in the least time (ONNX on a tie: it costs less
    per call)."""
    return min(sorted(seconds, key=lambda b: b != "onnx"), key=lambda b: seconds[b])


def probe_items(kind: str) -> list[list[Any]]:
    """The probe's batches: texts for an embedding model, (query, document) pairs for a
    reranker."""
    batches: list[list[Any]] = []
    for inputs, words in PROBE:
        texts = [
            " ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(words)) for i in range(inputs)
        ]
        if kind == "rerank":
            query = " ".join(_WORDS[:8])
            batches.append([(query, text) for text in texts])
        else:
            batches.append(texts)
    return batches


def time_probe(compute: Callable[[list[Any]], Sequence[Any]], kind: str, lanes: int = 1) -> float:
    """Seconds ``compute`` takes for the probe: the sum over its batches of their fastest
    timed pass. With ``lanes``, each batch is split over them and its parts run at once, as
    the worker's batcher runs a crowd's."""
    batches = probe_items(kind)
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="probe") as pool:

        def run(batch: list[Any]) -> None:
            if lanes == 1:
                compute(batch)
                return
            size = -(-len(batch) // lanes)
            list(pool.map(compute, [batch[i : i + size] for i in range(0, len(batch), size)]))

        started = time.perf_counter()
        for batch in batches:
            run(batch)
        passes = _PASSES if time.perf_counter() - started <= _SLOW_PASS else 1
        best = [float("inf")] * len(batches)
        for _ in range(passes):
            for i, batch in enumerate(batches):
                started = time.perf_counter()
                run(batch)
                best[i] = min(best[i], time.perf_counter() - started)
    return sum(best)


def choice_key(path: Path, kind: str, threads: int) -> str:
    """What a measured choice depends on, hashed: the model's files (names, sizes, times),
    the kind, the threads, the CPU and the versions of both backends."""
    stats = ((p.name, p.stat()) for p in path.iterdir() if p.is_file())
    files = sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats)
    parts = {
        "version": _VERSION,
        "model": str(path.resolve()),
        "files": files,
        "kind": kind,
        "threads": threads,
        "cpu": [_cpu_model(), os.cpu_count(), platform.machine()],
        "libraries": [_version(name) for name in ("torch", "onnxruntime", "sentence-transformers")],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def remembered(cache: Path | None, key: str) -> str | None:
    """The backend chosen before under ``key``, if it was and the record is whole."""
    if cache is None:
        return None
    try:
        record = json.loads((cache / "backends" / f"{key}.json").read_text())
        backend = record["backend"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return backend if backend in ("torch", "onnx") else None


def remember(cache: Path | None, key: str, choice: Choice) -> None:
    """Keeps ``choice`` under ``key`` (written whole or not at all; a failure is logged)."""
    if cache is None:
        return
    record = {"backend": choice.backend, "seconds": choice.seconds, "measured": time.time()}
    target = cache / "backends" / f"{key}.json"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Two workers of one model may measure at once: each writes its own partial file.
        partial = target.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(record))
        partial.replace(target)
    except OSError as exc:
        log.warning("cannot keep the backend choice in %s: %s", target, exc)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""
