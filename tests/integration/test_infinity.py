"""Infinity (``infinity-emb`` from PyPI, CPU, the demo MiniLM) as a command engine: the
embeddings modelyard relays are Infinity's own and agree with the bundled encoder's; a
killed Infinity is started again, and no request is left hanging.

Infinity lives in its own virtual environment (``bash bench/setup_peers.sh infinity``, which
``sh scripts/test-services --slow`` runs); these are slow tests, which CI runs."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Server, minilm

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INFINITY = Path(__file__).resolve().parents[2] / "bench" / ".peers" / "infinity" / "bin"
TEXTS = ["The river carries the boat.", "A violin plays at dawn.", "Owls hunt at night."]


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., Server]) -> Server:
    binary = INFINITY / "infinity_emb"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run bash bench/setup_peers.sh infinity")
    command = [
        str(binary), "v2", "--model-id", "{path}", "--served-model-name", "{name}",
        "--engine", "torch", "--device", "cpu", "--host", "{host}", "--port", "{port}",
        "--url-prefix", "/v1", "--api-key", "{key}", "--no-model-warmup",
    ]  # fmt: skip
    quoted = ", ".join(f'"{part}"' for part in command)
    return server_factory(
        f'[models.inf]\ncommand = [{quoted}]\npath = "{minilm()}"\n'
        'capabilities = ["embedding"]\nmemory = "1GiB"\nready_timeout = "3m"\n'
        'metrics = "/metrics"\n'
        'env = { HF_HUB_OFFLINE = "1", OMP_NUM_THREADS = "2" }\n'
        f'[models.encoder]\npath = "{minilm()}"\n'
    )


def embed(url: str, model: str, texts: list[str], **headers: str) -> np.ndarray:
    response = httpx.post(
        f"{url}/v1/embeddings", json={"model": model, "input": texts}, headers=headers, timeout=180
    )
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]])


def infinity_process(server: Server) -> psutil.Process:
    (entry,) = [m for m in server.ps() if m["name"] == "inf"]
    return psutil.Process(int(entry["pid"]))


def test_infinity_through_modelyard_is_infinity(server: Server) -> None:
    through = embed(server.url, "inf", TEXTS)
    process = infinity_process(server)
    argv = process.cmdline()
    direct_url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    key = argv[argv.index("--api-key") + 1]
    direct = embed(direct_url, "inf", TEXTS, Authorization=f"Bearer {key}")
    assert np.array_equal(through, direct)
    # Without the key, Infinity refuses: only the gateway can use it.
    assert httpx.post(f"{direct_url}/v1/embeddings", json={"input": TEXTS}).status_code in (
        401,
        403,
    )
    ours = embed(server.url, "encoder", TEXTS)
    cosine = np.sum(through * ours, axis=1) / (
        np.linalg.norm(through, axis=1) * np.linalg.norm(ours, axis=1)
    )
    assert np.all(cosine > 1 - 1e-4), cosine

    # Infinity's own metrics are merged into the gateway's, labelled with the model. An
    # engine slower than the scrape's 0.1 s is left out of that scrape (counted as such):
    # Infinity, busy a moment ago, once was; so a few scrapes.
    for _ in range(5):
        scraped = httpx.get(f"{server.url}/metrics").text
        samples = [s for f in text_string_to_metric_families(scraped) for s in f.samples]
        theirs = [s for s in samples if s.labels.get("model") == "inf" and "handler" in s.labels]
        if theirs:
            break
        time.sleep(0.5)
    assert any(s.labels["handler"] == "/v1/embeddings" for s in theirs), scraped[-2000:]


def test_infinity_killed_mid_request_then_restarted(server: Server) -> None:
    embed(server.url, "inf", TEXTS)  # loaded
    process = infinity_process(server)
    results: list[httpx.Response] = []

    def big() -> None:
        # Inputs of the model's full 256 tokens: seconds of work on a CPU.
        many = [" ".join([TEXTS[i % 3]] * 40) + f" {i}" for i in range(400)]
        results.append(
            httpx.post(
                f"{server.url}/v1/embeddings", json={"model": "inf", "input": many}, timeout=180
            )
        )

    worker = threading.Thread(target=big)
    worker.start()
    deadline = time.monotonic() + 30
    while not [m for m in server.ps() if m["name"] == "inf" and m["in_flight"]]:
        assert not results, results[0].text[:300]  # answered before it could be killed
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    worker.join(150)
    (killed,) = results
    # Infinity answers only at the end: its connection dropped before any answer, which the
    # dispatcher cannot tell from a runner that died before taking the request, so the
    # request waits for the restart and is sent again (as after a kill storm).
    assert killed.status_code in (200, 502), killed.text[:300]
    if killed.status_code == 502:
        assert killed.json()["error"]["code"] in ("runner_failed", "runner_unreachable")
    else:
        assert len(killed.json()["data"]) == 400
    again = embed(server.url, "inf", TEXTS)  # a new Infinity
    assert again.shape == (3, 384)
    assert infinity_process(server).pid != process.pid
