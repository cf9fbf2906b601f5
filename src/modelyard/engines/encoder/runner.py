"""Embedding and rerank models from Hugging Face directories, in our batching worker.

Each model runs in its own child process (``modelyard.workers.encoder``: sentence-transformers
under uvicorn), started and stopped like a llama.cpp server, so a crash or an unload frees
all of its memory.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from modelyard.catalog.hf import read_config, weights_bytes
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.errors import LoadFailedError
from modelyard.logbook import DEFAULT_ROTATION, Rotation, log_path
from modelyard.runners.process import ChildServer, free_port, runner_host, runner_key
from modelyard.workers.encoder_auth import KEY_ENV

WORKER_BYTES = 413 * 1024**2
"""Resident memory of an idle worker besides its weights: Python, torch, transformers,
uvicorn (MiniLM: 500 MiB idle with torch, 87 of them weights). With ONNX Runtime the
session holds a second copy of the weights (MiniLM: 581 MiB idle)."""
_TOKEN_BYTES = 20
"""Activations of a batch per padded token and hidden unit."""
_SCORE_BYTES = 4
"""f32 attention scores: per sequence, head, query and key position."""
_SCORES_HELD = {"torch": 1.0, "onnx": 2.5}
"""How many layers' attention scores a backend holds at once at its peak (torch frees each
layer's before the next; ONNX Runtime keeps more in flight). Measured with MiniLM."""
_TORCH_HEAP_BYTES = 100 * 1024**2
"""What glibc's heap keeps of torch's past batches beyond the present one."""


def footprint_parts(spec: ModelSpec) -> dict[str, int]:
    """What an encoder worker holds at its heaviest, part by part: the worker, the weights,
    and the activations of the largest batch it may run (``max_batch`` inputs of ``ctx``
    tokens, within ``max_batch_tokens``). With MiniLM's full batches of 256 tokens this is
    within 5 % of the peak on both backends. An ONNX model that runs batches on two lanes
    at once splits that largest batch between them. ``auto`` may run either backend: its
    estimate is the larger (it measures them one at a time, on small batches)."""
    config = read_config(spec.path)
    weights = weights_bytes(spec.path)
    hidden = int(config.get("hidden_size") or config.get("d_model") or 1024)
    heads = int(config.get("num_attention_heads") or 16)
    length = max(1, spec.ctx)
    batch = max(1, min(spec.max_batch, spec.max_batch_tokens // length))
    scores = batch * heads * length * length * _SCORE_BYTES
    hidden_states = batch * length * hidden * _TOKEN_BYTES

    def parts(backend: str) -> dict[str, int]:
        onnx = backend == "onnx"
        activations = hidden_states + int(scores * _SCORES_HELD[backend])
        return {
            "worker": WORKER_BYTES,
            "weights": weights * (2 if onnx else 1),
            "activations": activations + (0 if onnx else _TORCH_HEAP_BYTES),
        }

    if spec.backend == "auto":
        return max((parts("onnx"), parts("torch")), key=lambda p: sum(p.values()))
    return parts(spec.backend)


def may_run_onnx(spec: ModelSpec) -> bool:
    """Whether the worker may run ``spec`` on ONNX Runtime (``auto`` measures it): it is then
    given a cache for exports of read-only models and for ``auto``'s choices."""
    return spec.backend != "torch"


def worker_args(spec: ModelSpec, port: int, onnx_cache: Path) -> list[str]:
    """Command-line flags of ``modelyard.workers.encoder`` for ``spec``."""
    args = [
        "--model",
        str(spec.path),
        "--name",
        spec.name,
        "--kind",
        spec.kind,
        "--host",
        runner_host(),
        "--port",
        str(port),
        "--backend",
        spec.backend,
        "--max-batch",
        str(spec.max_batch),
        "--batch-wait",
        str(spec.batch_wait),
        "--max-batch-tokens",
        str(spec.max_batch_tokens),
    ]
    if spec.threads:
        args += ["--threads", str(spec.threads)]
    if may_run_onnx(spec):
        args += ["--onnx-cache", str(onnx_cache)]
    if spec.truncate:
        args.append("--truncate")
    if not spec.bucketing:
        args.append("--no-bucketing")
    if spec.matryoshka:
        args.append("--matryoshka")
    return args + list(spec.extra_args)


class EncoderRunner:
    """Starts one encoder worker per model; logs go to ``<log_dir>/<model>.log``."""

    reads_files = True  # its estimate reads the model's config and weight headers

    def __init__(
        self,
        log_dir: Path,
        cache_dir: Path,
        load_timeout: float = 300.0,
        rotation: Rotation = DEFAULT_ROTATION,
    ) -> None:
        self._log_dir = log_dir
        self._cache_dir = cache_dir
        self._load_timeout = load_timeout
        self._rotation = rotation

    def estimate(self, spec: ModelSpec) -> Footprint:
        try:
            return {"ram": sum(footprint_parts(spec).values())}
        except (OSError, ValueError) as exc:
            raise LoadFailedError(f"cannot read {spec.path}: {exc}") from exc

    async def start(self, spec: ModelSpec) -> ChildServer:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise LoadFailedError(
                f"{spec.name} needs sentence-transformers: pip install 'modelyard[encoder]' "
                "(with the CPU build of torch installed first)"
            )
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "modelyard.workers.encoder",
            *worker_args(spec, port, self._cache_dir / "onnx"),
        ]
        key = runner_key()
        return await ChildServer.start(
            argv,
            port=port,
            log_path=log_path(self._log_dir, spec.runner_name),
            rotation=self._rotation,
            load_timeout=self._load_timeout,
            env={KEY_ENV: key},
            key=key,
        )
