"""The peers BENCH.md compares modelyard with, each in its own virtual environment made by
``bash bench/setup_peers.sh`` under ``bench/.peers/<name>/``.

A scenario asks ``available(name)``; when a peer is missing its rows say why (not installed
yet, or not installable here, with pip's reason from ``bench/.peers/status.json``) instead of
being skipped silently.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from common import HERE, Row, free_port, pinned, wait_http

PEERS = HERE / ".peers"
ENABLED = True
"""Off in smoke mode: the harness is checked without peers."""


def status(name: str) -> str:
    """``installed 1.2.3``, or why the peer cannot run."""
    if not ENABLED:
        return "peers off (smoke mode)"
    record = _records().get(name)
    if record is None or not (PEERS / name / "bin" / "python").exists():
        return f"not installed: bash bench/setup_peers.sh {name}"
    if "error" in record:
        return f"not installable here: {record['error']}"
    return f"installed {record['installed']}"


def available(name: str) -> bool:
    return status(name).startswith("installed")


def not_judged(label: str, value: float, name: str) -> Row:
    """A row with modelyard's figure whose peer ``name`` is missing, saying why."""
    return Row(label, value, None, float("nan"), f"not judged: {status(name)}", None)


def version(name: str) -> str | None:
    return _records().get(name, {}).get("installed")


def _records() -> dict[str, dict[str, str]]:
    path = PEERS / "status.json"
    data: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    return data


def _bin(name: str, program: str) -> str:
    return str(PEERS / name / "bin" / program)


class Peer:
    """A peer's server process on loopback."""

    def __init__(self, argv: list[str], health: str, port: int, core: int | None, **env: str):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        fd, name = tempfile.mkstemp(prefix="peer-", suffix=".log")
        self.log = Path(name)
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                pinned(argv, core), env={**os.environ, **env}, stdout=log, stderr=log
            )
        try:
            wait_http(self.url + health, limit=180)
        except RuntimeError:
            self.close()
            raise RuntimeError(f"{argv[0]} did not start:\n{self.log.read_text()}") from None

    def failed(self, exc: Exception) -> str:
        """What became of a peer whose answer broke off (``exc``): it died, or it broke."""
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            return f"broke off its answer ({exc}); its log: {self.log}"
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        return f"died serving the model ({how}); its log: {self.log}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def litellm(upstream: str, model: str, core: int | None = None) -> Peer:
    """LiteLLM's proxy forwarding ``model`` to the OpenAI-compatible server at ``upstream``."""
    config = Path(tempfile.mkdtemp()) / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    port = free_port()
    argv = [_bin("litellm", "litellm"), "--config", str(config), "--port", str(port)]
    argv += ["--host", "127.0.0.1", "--num_workers", "1"]
    return Peer(
        argv,
        "/health/liveliness",
        port,
        core,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        # modelyard runs without API keys here too: compare like with like.
        LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
        LITELLM_LOG="ERROR",
    )


def llama_cpp_python(model: Path, ctx: int, threads: int, core: int | None = None) -> Peer:
    """llama-cpp-python's OpenAI server on a GGUF (one sequence at a time, as it serves)."""
    port = free_port()
    argv = [_bin("llama-cpp-python", "python"), "-m", "llama_cpp.server", "--model", str(model)]
    argv += ["--n_ctx", str(ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads)]
    argv += ["--chat_format", "gemma", "--host", "127.0.0.1", "--port", str(port)]
    return Peer(argv, "/v1/models", port, core)


def infinity_argv(model: str, name: str, port: str) -> list[str]:
    """Infinity serving the sentence-transformers directory ``model`` with torch on CPU."""
    argv = [_bin("infinity", "infinity_emb"), "v2", "--model-id", model]
    argv += ["--served-model-name", name, "--engine", "torch", "--device", "cpu"]
    return [*argv, "--port", port, "--host", "127.0.0.1", "--no-model-warmup"]


def infinity_env(threads: int) -> dict[str, str]:
    threads_env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    # DO_NOT_TRACK: no start-up report to Infinity's telemetry (a thread retrying a host it
    # cannot resolve here).
    return {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", **threads_env}


def infinity(model: Path, threads: int, core: int | None = None) -> Peer:
    port = free_port()
    argv = infinity_argv(str(model), "peer", str(port))
    return Peer(argv, "/health", port, core, **infinity_env(threads))
