"""Child program: serves one GGUF model with llama.cpp's HTTP server through xllamacpp.

Takes the ``llama-server`` flags that ``modelyard.runners.llamacpp.server_args`` builds (and
the common ones a catalog's ``extra_args`` may add), so the same argv runs this program or a
real ``llama-server`` binary, and its ``--api-key`` from ``LLAMA_API_KEY`` as llama-server
does. Runs until SIGTERM or SIGKILL, or until the gateway dies.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from modelyard.workers import lifeline


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelyard.workers.llamacpp", allow_abbrev=False)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=0)
    p.add_argument("-t", "--threads", type=int)
    p.add_argument("-tb", "--threads-batch", type=int)
    p.add_argument("-a", "--alias", action="append", default=[])
    p.add_argument("--slots", action="store_true")
    p.add_argument("--metrics", action="store_true")
    p.add_argument("--jinja", dest="jinja", action="store_true", default=None)
    p.add_argument("--no-jinja", dest="jinja", action="store_false")
    p.add_argument("--chat-template")
    p.add_argument("--chat-template-file")
    p.add_argument("--mmproj")
    p.add_argument("--embedding", "--embeddings", action="store_true")
    p.add_argument("--reranking", "--rerank", action="store_true")
    p.add_argument("--pooling", choices=["none", "mean", "cls", "last", "rank"])
    p.add_argument("-b", "--batch-size", type=int)
    p.add_argument("-ub", "--ubatch-size", type=int)
    p.add_argument("-fa", "--flash-attn", choices=["on", "off", "auto"])
    p.add_argument("-ctk", "--cache-type-k")
    p.add_argument("-ctv", "--cache-type-v")
    p.add_argument("-s", "--seed", type=int)
    p.add_argument("--rope-freq-base", type=float)
    p.add_argument("--rope-freq-scale", type=float)
    p.add_argument("--keep", type=int)
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("-cram", "--cache-ram", type=int, help="MiB of host RAM for prompt states")
    p.add_argument("--api-key", default=os.environ.get("LLAMA_API_KEY"))
    return p


def build_params(argv: list[str]) -> Any:
    import xllamacpp as x

    a = _parser().parse_args(argv)
    p = x.CommonParams()
    p.model.path = a.model
    p.port = a.port
    p.hostnames = [a.host]
    p.n_ctx = a.ctx_size
    p.n_parallel = a.parallel
    p.n_gpu_layers = a.n_gpu_layers
    if a.threads:
        p.cpuparams.n_threads = a.threads
        p.cpuparams_batch.n_threads = a.threads_batch or a.threads
    if a.alias:
        p.model_alias = set(a.alias)
    p.endpoint_slots = a.slots
    p.endpoint_metrics = a.metrics
    if a.chat_template_file:
        with open(a.chat_template_file, encoding="utf-8") as f:
            p.chat_template = f.read()
    elif a.chat_template:
        p.chat_template = a.chat_template
    if a.jinja is not None:
        p.use_jinja = a.jinja
    if a.mmproj:
        p.mmproj.path = a.mmproj
    if a.embedding or a.reranking:
        p.embedding = True
    if a.reranking:
        p.pooling_type = x.llama_pooling_type.LLAMA_POOLING_TYPE_RANK
    elif a.pooling:
        p.pooling_type = getattr(x.llama_pooling_type, f"LLAMA_POOLING_TYPE_{a.pooling.upper()}")
    if a.batch_size:
        p.n_batch = a.batch_size
    if a.ubatch_size:
        p.n_ubatch = a.ubatch_size
    if a.flash_attn:
        name = {"on": "ENABLED", "off": "DISABLED", "auto": "AUTO"}[a.flash_attn]
        p.flash_attn_type = getattr(x.llama_flash_attn_type, f"LLAMA_FLASH_ATTN_TYPE_{name}")
    if a.cache_type_k:
        p.cache_type_k = getattr(x.ggml_type, f"GGML_TYPE_{a.cache_type_k.upper()}")
    if a.cache_type_v:
        p.cache_type_v = getattr(x.ggml_type, f"GGML_TYPE_{a.cache_type_v.upper()}")
    if a.seed is not None:
        p.sampling.seed = a.seed
    if a.rope_freq_base:
        p.rope_freq_base = a.rope_freq_base
    if a.rope_freq_scale:
        p.rope_freq_scale = a.rope_freq_scale
    if a.keep is not None:
        p.n_keep = a.keep
    if a.no_warmup:
        p.warmup = False
    if a.cache_ram is not None:
        p.cache_ram_mib = a.cache_ram
    if a.api_key:
        p.api_keys = [a.api_key]
    return p


def main(argv: list[str]) -> None:
    lifeline.hold()
    import xllamacpp as x

    params = build_params(argv)
    # SIGTERM's default action ends the process at once, which is what a stop wants: the
    # engine holds no state worth flushing.
    server = x.Server(params)
    print(f"modelyard worker: serving on {server.listening_address}", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1:])
