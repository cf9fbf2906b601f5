"""/upstream/{model}/{path} on the real llama.cpp engine of the demo chat model."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.integration.conftest import Server


@pytest.mark.slow
def test_passthrough_reaches_llama_cpp_own_api(server_factory: Callable[..., Server]) -> None:
    server = server_factory(None)  # the demo models
    props = httpx.get(f"{server.url}/upstream/demo/props", timeout=120)
    assert props.status_code == 200
    assert props.json()["default_generation_settings"]["n_ctx"] > 0
    tokens = httpx.post(f"{server.url}/upstream/demo/tokenize", json={"content": "Hello world"})
    assert tokens.status_code == 200
    ids = tokens.json()["tokens"]
    assert len(ids) >= 2
    text = httpx.post(f"{server.url}/upstream/demo/detokenize", json={"tokens": ids})
    assert text.json()["content"].strip() == "Hello world"
    slots = httpx.get(f"{server.url}/upstream/demo/slots")
    assert slots.status_code == 200
    assert not any(s["is_processing"] for s in slots.json())
