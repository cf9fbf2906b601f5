"""Embedding and rerank models from Hugging Face directories, in our batching worker.

Each model runs in its own child process (``modelyard.workers.encoder``: sentence-transformers
under uvicorn), started and stopped like a llama.cpp server, so a crash or an unload frees
all of its memory.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from modelyard.catalog.hf import weights_bytes
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.errors import LoadFailedError
from modelyard.logbook import DEFAULT_ROTATION, Rotation, log_path
from modelyard.runners.process import ChildServer, free_port, runner_key
from modelyard.workers.encoder_auth import KEY_ENV

# Resident memory of a worker besides weights and activations: Python, torch, transformers,
# ONNX Runtime, uvicorn (measured with MiniLM: 509 MiB idle with torch, 582 with ONNX, 87 of
# them weights).
WORKER_BYTES = 440 * 1024**2
# Activations of one full batch, per padded token and hidden unit: MiniLM grew by ~126 MiB
# for 16384 padded tokens of width 384 (torch; ONNX Runtime without its arena, alike).
_ACTIVATION_BYTES = 20


def worker_args(spec: ModelSpec, port: int, onnx_cache: Path) -> list[str]:
    """Command-line flags of ``modelyard.workers.encoder`` for ``spec``."""
    args = [
        "--model",
        str(spec.path),
        "--name",
        spec.name,
        "--kind",
        spec.kind,
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
    if spec.backend == "onnx":
        args += ["--onnx-cache", str(onnx_cache)]
    if spec.truncate:
        args.append("--truncate")
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
            weights = weights_bytes(spec.path)
            hidden = _hidden_size(spec.path)
        except (OSError, ValueError) as exc:
            raise LoadFailedError(f"cannot read {spec.path}: {exc}") from exc
        activations = spec.max_batch_tokens * hidden * _ACTIVATION_BYTES
        return {"ram": WORKER_BYTES + weights + activations}

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


def _hidden_size(path: Path) -> int:
    config_file = path / "config.json"
    if not config_file.is_file():
        return 1024
    config = json.loads(config_file.read_text(encoding="utf-8"))
    return int(config.get("hidden_size") or config.get("d_model") or 1024)
