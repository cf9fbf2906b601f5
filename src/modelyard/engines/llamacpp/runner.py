"""GGUF models through llama.cpp's own HTTP server.

One argv of ``llama-server`` flags serves both ways to run it: exec'd as given when the user
configures a ``llama-server`` binary, or handed to our xllamacpp child program
(``modelyard.workers.llamacpp``), which reads the same flags.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from modelyard.catalog.gguf import GGUFError, gguf_info, split_bytes
from modelyard.catalog.spec import Footprint, ModelSpec
from modelyard.catalog.template import jinja_file, model_warnings
from modelyard.engines.llamacpp.kvstore import KvStore, identity, warm_swaps
from modelyard.engines.llamacpp.warm import WarmSlots
from modelyard.errors import LoadFailedError
from modelyard.logbook import DEFAULT_ROTATION, Rotation, log_path
from modelyard.runners.gpu import Gpus, NoGpus, device, visible
from modelyard.runners.process import ChildServer, free_port, runner_host, runner_key

log = logging.getLogger(__name__)

KEY_ENV = "LLAMA_API_KEY"
"""llama-server reads its ``--api-key`` from here (so the key is not on its command line)."""


def replica_threads(spec: ModelSpec) -> int | None:
    """Threads of each runner of a model that may run several (``max_replicas``) without
    ``threads`` set: the cores shared out between them (llama.cpp takes them all)."""
    if spec.max_replicas <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // spec.max_replicas)


def server_args(spec: ModelSpec, port: int, slot_save_path: str | None = None) -> list[str]:
    """``llama-server`` flags for ``spec`` listening on the runners' address
    (``runner_host``) at ``port`` (saving slots under ``slot_save_path``, when given)."""
    args = [
        "--model",
        str(spec.path),
        "--host",
        runner_host(),
        "--port",
        str(port),
        "--ctx-size",
        str(spec.ctx * spec.parallel),
        "--parallel",
        str(spec.parallel),
        # "auto" is resolved by the scheduler before a start; unresolved, llama.cpp fits it.
        "--n-gpu-layers",
        str(spec.gpu_layers) if spec.gpu_layers != "auto" else "-1",
        "--alias",
        spec.name,
        "--slots",
        "--metrics",
        "--cache-ram",
        str(spec.prompt_cache_bytes // 1024**2),
    ]
    if slot_save_path is not None:
        args += ["--slot-save-path", slot_save_path]
    threads = spec.threads or replica_threads(spec)
    if threads:
        args += ["--threads", str(threads), "--threads-batch", str(threads)]
    template = jinja_file(spec)
    if template is not None:
        args += ["--jinja", "--chat-template-file", str(template)]
    elif spec.chat_template:
        args += ["--no-jinja", "--chat-template", spec.chat_template]
    else:
        args += ["--jinja"]  # the GGUF's own template (tools work through it)
    if spec.mmproj:
        args += ["--mmproj", str(spec.mmproj)]
    if spec.kind != "chat":
        # An input must fit in one physical batch to be embedded or scored: allow the context.
        batch = str(spec.ctx)
        args += ["--embedding" if spec.kind == "embedding" else "--reranking"]
        args += ["--batch-size", batch, "--ubatch-size", batch]
    return args + list(spec.extra_args)


class LlamaCppServer(ChildServer):
    """A running llama.cpp server, and its saved slots (``warm``: ``None`` when off)."""

    warm: WarmSlots | None = None


class LlamaCppRunner:
    """Starts one llama.cpp server per model; logs go to ``<log_dir>/<model>.log``, saved
    slots to ``kv_dir``."""

    reads_files = True  # its estimate reads the GGUF header

    def __init__(
        self,
        log_dir: Path,
        load_timeout: float = 600.0,
        rotation: Rotation = DEFAULT_ROTATION,
        gpus: Gpus | None = None,
        kv_dir: Path | None = None,
    ) -> None:
        self._log_dir = log_dir
        self._load_timeout = load_timeout
        self._rotation = rotation
        self._gpus = gpus or NoGpus()
        self.store = KvStore(kv_dir or log_dir.parent / "kv")
        self._swept = False

    def estimate(self, spec: ModelSpec) -> Footprint:
        try:
            info = gguf_info(spec)
        except (GGUFError, OSError) as exc:
            raise LoadFailedError(f"cannot read {spec.path}: {exc}") from exc
        projector = spec.mmproj.stat().st_size if spec.mmproj else 0
        # "auto" unresolved: what it takes at the least, on the CPU.
        layers = spec.gpu_layers if spec.gpu_layers != "auto" else 0
        ram, vram = split_bytes(info, spec.ctx, spec.parallel, layers)
        footprint = {"ram": ram + spec.prompt_cache_bytes}
        gpus = spec.gpus or (0,)
        if vram:
            # llama.cpp splits the layers between the GPUs (by their free memory: evenly
            # here), and puts the projector on the first.
            for n, index in enumerate(gpus):
                footprint[device(index)] = vram // len(gpus) + (projector if n == 0 else 0)
        else:
            footprint["ram"] += projector
        return footprint

    async def start(self, spec: ModelSpec) -> LlamaCppServer:
        for warning in model_warnings(spec):
            log.warning("%s: %s", spec.name, warning)
        ident = None
        if warm_swaps(spec):
            ident = await asyncio.to_thread(self._prepare_store, spec)
        port = free_port()
        args = server_args(spec, port, self.store.save_path if ident else None)
        if spec.llama_server is not None:
            argv = [str(spec.llama_server), *args]
        else:
            argv = [sys.executable, "-m", "modelyard.workers.llamacpp", *args]
        key = runner_key()
        server = await LlamaCppServer.start(
            argv,
            port=port,
            log_path=log_path(self._log_dir, spec.runner_name),
            rotation=self._rotation,
            load_timeout=self._load_timeout,
            # Its GPUs, or none: a model the budget counts in RAM alone takes no GPU memory.
            env={KEY_ENV: key, **visible(spec.gpus)},
            key=key,
            lifeline=spec.llama_server is not None,
            gpus=self._gpus,
        )
        if ident is not None:
            server.warm = WarmSlots(spec, ident, server.base_url, server.headers, self.store)
        return server

    def _prepare_store(self, spec: ModelSpec) -> str | None:
        """The setup's identity for its saved states (``None``: its files cannot be read);
        at the first start, what earlier runs left half-done is swept away."""
        if not self._swept:
            self._swept = True
            swept = self.store.sweep()
            if swept:
                log.info("deleted %d saved KV file(s) no state accounts for", swept)
        try:
            self.store.root.mkdir(parents=True, exist_ok=True)
            return identity(spec)
        except Exception as exc:  # a best effort: the model loads without them
            log.warning("%s: no warm swaps (%s)", spec.name, exc)
            return None
