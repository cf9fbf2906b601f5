"""The encoder worker's models: a sentence-transformers embedding model or cross-encoder,
loaded from a local directory (never from a hub), with torch or exported to ONNX Runtime,
and the token counts the server checks lengths with. ``modelyard.workers.encoder`` serves
them over HTTP.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import hashlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from modelyard.workers import encoder_choice

log = logging.getLogger("modelyard.encoder")

Vector = npt.NDArray[np.float32]

_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter (malloc.h)."""


class Encoder(Protocol):
    """What the HTTP layer needs from a loaded model."""

    kind: str
    max_tokens: int
    dimensions: int
    tokenizer: Any
    """The model's tokenizer; ``compute`` uses it on the batch thread."""
    lanes: int
    """Batches ``compute`` may run at once, each on its own thread."""

    def compute(self, items: list[Any]) -> Sequence[Any]:
        """Embeddings of texts, or scores of ``(query, document)`` pairs; on the batch thread."""
        ...


class TokenCounter:
    """Counts tokens as the model sees them, special tokens included.

    A private copy of the model's tokenizer: fast tokenizers must not be used from two
    threads at once ("Already borrowed"), and the batch thread uses the model's own. The Rust
    tokenizer is used directly where there is one (about half the per-call cost).
    """

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            self._fast: Any = Tokenizer.from_str(backend.to_str())
            self._fast.no_truncation()
            self._fast.no_padding()
        else:
            self._fast = None
            self._slow = copy.deepcopy(tokenizer)

    def __call__(self, texts: Sequence[str], pairs_with: str | None = None) -> list[int]:
        inputs: list[Any] = list(texts) if pairs_with is None else [(pairs_with, t) for t in texts]
        if self._fast is not None:
            return [len(e.ids) for e in self._fast.encode_batch(inputs, add_special_tokens=True)]
        if pairs_with is None:
            ids = self._slow(inputs, add_special_tokens=True, truncation=False)["input_ids"]
        else:
            ids = self._slow(
                [pairs_with] * len(texts), list(texts), add_special_tokens=True, truncation=False
            )["input_ids"]
        return [len(x) for x in ids]


class SentenceEncoder:
    """A ``SentenceTransformer`` model: texts → vectors (as ``encode`` gives them)."""

    kind = "embedding"

    def __init__(self, model: Any, lanes: int = 1) -> None:
        import torch

        self._torch = torch
        self._model = model
        self.max_tokens = int(model.max_seq_length or 512)
        self.dimensions = int(model.get_embedding_dimension())
        self.tokenizer = model.tokenizer
        self.lanes = lanes
        # A fast tokenizer must not be used by two threads at once; the forward pass may.
        self._tokenizing = threading.Lock()

    def compute(self, items: list[str]) -> list[Vector]:
        # What ``encode`` does for one batch, without its per-call bookkeeping.
        with self._torch.inference_mode():
            with self._tokenizing:
                features = self._model.preprocess(items)
            output = self._model(features)["sentence_embedding"]
        vectors: Vector = output.float().cpu().numpy()
        return list(vectors)


class CrossEncoderModel:
    """A ``CrossEncoder`` reranker: ``(query, document)`` pairs → relevance scores."""

    kind = "rerank"
    dimensions = 0
    lanes = 1  # ``predict`` tokenizes inside: one batch at a time

    def __init__(self, model: Any) -> None:
        self._model = model
        self.max_tokens = int(model.max_seq_length or 512)
        self.tokenizer = model.tokenizer

    def compute(self, items: list[tuple[str, str]]) -> list[float]:
        scores = self._model.predict(
            items, batch_size=len(items), show_progress_bar=False, convert_to_numpy=True
        )
        return [float(s) for s in np.asarray(scores).reshape(len(items), -1)[:, 0]]


def load(
    path: Path, kind: str, backend: str, threads: int, cache: Path | None
) -> tuple[SentenceEncoder | CrossEncoderModel, str]:
    """The model at ``path`` and the backend it runs on: ``auto`` is the faster of the two
    on this machine (``encoder_choice``), torch where the model does not export to ONNX.
    ``cache`` keeps ONNX exports of read-only models and the measured choices."""
    if backend == "auto":
        model, backend = _auto(path, kind, threads, cache)
    else:
        model = _load(path, kind, backend, threads, cache)
    if backend == "onnx":
        _return_freed_buffers()
    return model, backend


def _auto(
    path: Path, kind: str, threads: int, cache: Path | None
) -> tuple[SentenceEncoder | CrossEncoderModel, str]:
    key = encoder_choice.choice_key(path, kind, threads)
    chosen = encoder_choice.remembered(cache, key)
    if chosen is not None:
        log.info("auto backend: %s, the faster when measured before on this machine", chosen)
        return _load_or_torch(path, kind, chosen, threads, cache)
    # One backend in memory at a time: the worker never holds more than its estimate.
    model = _load(path, kind, "torch", threads, cache)
    seconds = {"torch": encoder_choice.time_probe(model.compute, kind, model.lanes)}
    del model
    _release()
    try:
        model = _load(path, kind, "onnx", threads, cache)
    except Exception as exc:  # any failure of an export: the model still runs on torch
        log.warning("%s does not run on ONNX Runtime (%s): running it on torch", path, exc)
        return _load(path, kind, "torch", threads, cache), "torch"
    seconds["onnx"] = encoder_choice.time_probe(model.compute, kind, model.lanes)
    choice = encoder_choice.Choice(encoder_choice.faster(seconds), seconds)
    log.info(
        "auto backend: %s (the probe took %s)",
        choice.backend,
        ", ".join(f"{b} {s * 1000:.0f} ms" for b, s in sorted(seconds.items())),
    )
    encoder_choice.remember(cache, key, choice)
    if choice.backend == "torch":
        del model
        _release()
        model = _load(path, kind, "torch", threads, cache)
    return model, choice.backend


def _load_or_torch(
    path: Path, kind: str, backend: str, threads: int, cache: Path | None
) -> tuple[SentenceEncoder | CrossEncoderModel, str]:
    if backend == "onnx":
        try:
            return _load(path, kind, "onnx", threads, cache), "onnx"
        except Exception as exc:  # the export went away, or no longer loads
            log.warning("%s does not run on ONNX Runtime (%s): running it on torch", path, exc)
    return _load(path, kind, "torch", threads, cache), "torch"


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its allocator keeps its own counsel
        return None


def _release() -> None:
    """Gives the memory of a dropped model back to the system."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _return_freed_buffers() -> None:
    """ONNX Runtime (its arena off) takes every tensor from glibc: with the mmap threshold
    fixed, a batch's large buffers go back to the system when freed instead of staying in
    the heap, so the worker holds what the present batch uses (MiniLM's full batches: 840 to
    880 MiB instead of 1,000 to 1,200, within 2 % of the speed). torch runs 30 % slower so,
    and is left alone."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def _load(
    path: Path, kind: str, backend: str, threads: int, cache: Path | None
) -> SentenceEncoder | CrossEncoderModel:
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    lanes = onnx_lanes(kind, threads) if backend == "onnx" else 1
    # With lanes, torch does only the small steps around ONNX Runtime's pass, on each lane.
    torch.set_num_threads(threads if lanes == 1 else 1)
    cls = SentenceTransformer if kind == "embedding" else CrossEncoder
    kwargs: dict[str, Any] = {"device": "cpu", "local_files_only": True}
    if backend == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads // lanes)
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False
        # Idle threads sleep instead of spinning: other models and the gateway share the CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        kwargs["backend"] = "onnx"
        kwargs["model_kwargs"] = {"provider": "CPUExecutionProvider", "session_options": options}
        path = _onnx_export(cls, path, kwargs, cache)
    model = cls(str(path), **kwargs)
    model.eval()
    return SentenceEncoder(model, lanes) if kind == "embedding" else CrossEncoderModel(model)


def onnx_lanes(kind: str, threads: int) -> int:
    """Batches an ONNX model runs at once. ONNX Runtime runs a whole pass without Python's
    lock, so two batches of one thread each use two cores better than one batch of two
    threads (MiniLM, 2 cores, batches of 16: 909 against 654 sentences/s; lone sentences 556
    against 293). A reranker's ``predict`` tokenizes inside: one batch at a time."""
    return 2 if kind == "embedding" and threads >= 2 else 1


def _onnx_export(cls: Any, path: Path, kwargs: dict[str, Any], cache: Path | None) -> Path:
    """Where the ONNX export of ``path`` is, exporting it on first use.

    The export is kept next to the model (``DIR/onnx/model.onnx``, where sentence-transformers
    looks for it) or, when that directory is read-only, in ``cache``.
    """
    if (path / "onnx" / "model.onnx").is_file():
        return path
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    cached = cache / f"{path.name}-{key}" if cache else None
    if cached is not None and (cached / "onnx" / "model.onnx").is_file():
        return cached
    log.info("exporting %s to ONNX (once)", path)
    model = cls(str(path), **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        exported = Path(tmp) / "onnx" / "model.onnx"
        try:
            (path / "onnx").mkdir(exist_ok=True)
            partial = path / "onnx" / "model.onnx.partial"
            shutil.copyfile(exported, partial)
            partial.replace(path / "onnx" / "model.onnx")
            return path
        except OSError as exc:
            if cached is None:
                raise
            log.info("cannot write next to the model (%s); keeping the export in %s", exc, cached)
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(tmp, cached, dirs_exist_ok=True)
            return cached
