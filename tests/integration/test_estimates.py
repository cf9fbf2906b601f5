"""A model's memory estimate is what it holds at its heaviest: every demo model, driven to
its worst case (full slots of long prompts and a full prompt cache; full batches of inputs
as long as the model reads), is measured within 10 % of its estimate, and ``show`` lists
what the estimate counts."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, gemma, minilm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., Server]) -> Server:
    config = (
        '[memory]\nmeasure_interval = "200ms"\n'
        f'[models.gemma]\npath = "{gemma()}"\nctx = 1024\nparallel = 2\nchat_template = "gemma"\n'
        f'[models.minilm-torch]\npath = "{minilm()}"\nbackend = "torch"\n'
        f'[models.minilm-onnx]\npath = "{minilm()}"\nbackend = "onnx"\n'
    )
    return server_factory(config)


def post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    answer = httpx.post(f"{server.url}{path}", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    return answer


def memory(server: Server, model: str) -> dict[str, Any]:
    found: dict[str, Any] = post(server, "/api/show", {"model": model}).json()["memory"]
    return found


def at_its_heaviest(
    server: Server, model: str, load: Callable[[int], None], rounds: int, clients: int = 8
) -> None:
    """Drives ``model`` with ``rounds`` of ``clients`` loads at once, alone in memory, then
    checks its estimate against the most it was measured to hold."""
    for other in ("gemma", "minilm-torch", "minilm-onnx"):
        if other != model:
            post(server, "/api/unload", {"model": other})
    shown = memory(server, model)
    estimate = shown["estimate"]["ram"]
    assert sum(shown["parts"].values()) == estimate
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(rounds):
            list(pool.map(load, range(clients)))
    measured = memory(server, model)["measured"]["ram"]
    error = (estimate - measured) / measured
    print(f"{model}: estimate {estimate >> 20} MiB, peak {measured >> 20} MiB: {error:+.1%}")
    assert abs(error) < 0.10


def test_estimates_gemma_with_full_slots_and_prompt_cache(server: Server) -> None:
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "field"]

    def load(n: int) -> None:
        prompt = " ".join(f"{random.choice(words)}{random.randint(0, 99)}" for _ in range(330))
        answer = post(
            server, "/v1/completions", {"model": "gemma", "prompt": prompt, "max_tokens": 2}
        )
        assert answer.json()["usage"]["prompt_tokens"] > 800  # most of a 1024-token slot

    shown = memory(server, "gemma")
    assert set(shown["parts"]) == {
        "weights",
        "kv_cache",
        "output",
        "compute",
        "engine",
        "prompt_cache",
    }
    at_its_heaviest(server, "gemma", load, rounds=3, clients=2)  # both slots, 6 prompts


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_estimates_minilm_with_full_batches(server: Server, backend: str) -> None:
    model = f"minilm-{backend}"
    text = " ".join(f"word{i}" for i in range(300))  # past its 256 tokens: cut to them

    def load(n: int) -> None:  # clients at once, merged into full batches of 32 inputs
        inputs = [f"{n} {i} {text}" for i in range(8)]
        post(server, "/v1/embeddings", {"model": model, "input": inputs, "truncate": True})

    assert set(memory(server, model)["parts"]) == {"worker", "weights", "activations"}
    at_its_heaviest(server, model, load, rounds=3, clients=9)
