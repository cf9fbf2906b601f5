from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from modelyard.hub.api import Hub
from tests.hubserver import FakeHub, Repo, running_hub

MiB = 1024 * 1024


def blob(seed: str, size: int) -> bytes:
    """``size`` bytes starting like a GGUF file, different for every seed."""
    block = hashlib.sha256(seed.encode()).digest() * (size // 32 + 1)
    return (b"GGUF" + block)[:size]


def gguf_repo(hub: FakeHub) -> dict[str, bytes]:
    files = {
        "README.md": b"# a model\n",
        "tiny-Q4_K_M.gguf": blob("q4", 3 * MiB + 123),
        "tiny-Q8_0.gguf": blob("q8", 2 * MiB),
        "mmproj-tiny-F16.gguf": blob("proj", 5000),
    }
    hub.state.repos["acme/tiny-GGUF"] = Repo(files)
    return files


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    yield from running_hub()


@pytest.fixture
def client(hub: FakeHub) -> Iterator[Hub]:
    h = Hub(endpoint=hub.url, offline=False)
    yield h
    h.close()
